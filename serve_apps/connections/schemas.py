"""Request and response bodies of the connections API (the connection document itself is
meterray.connections: validated there, with every problem listed, not by FastAPI)."""
from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class ConnectionOut(BaseModel):
    connection_id: str
    kind: str = Field(description="modbus_tcp or mqtt")
    organisation_id: UUID | None = Field(description="the owner; null: platform staff's only")
    version: int | None = Field(description="the latest version stored through this API; null: never changed here "
                                            "(registered by `meterray register` or the demo)")
    updated_at: datetime
    enabled: bool
    config: dict[str, Any] = Field(description="the connection document (PUT it back changed to change it)")
    problems: list[str] = Field(default_factory=list, description="why a stored connection is not run, if it is not")


class ConnectionPage(BaseModel):
    connections: list[ConnectionOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class VersionOut(BaseModel):
    version: int
    kind: str
    deleted: bool
    config: dict[str, Any] | None
    organisation_id: UUID | None
    changed_by: UUID | None = Field(description="the user whose access token stored this version")
    created_at: datetime


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1, max_length=1024, description="the topic the message arrives on")
    payload: str | dict[str, Any] | list[Any] = Field(description="the message body: a string as sent, or JSON")


class DryRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = Field(None, description="a connection document to try instead of the stored "
                                                             "one (required for /api/v1/connections/dry-run)")
    sample: Sample | None = Field(None, description="MQTT: the message to decode with the connection's codec")


class ValueOut(BaseModel):
    quantity: str = Field(description="OBIS code")
    value: float
    unit: str
    quality: int
    quality_flags: list[str]


class NoValueOut(BaseModel):
    quantity: str
    reason: str


class FailureOut(BaseModel):
    kind: str = Field(description="timeout, connection_refused, connection_lost, exception_code, bad_response, "
                                  "host_unresolved, configuration")
    detail: str
    exception_code: int | None
    suspect: str = Field(description="what to check first: unit_id, profile, endpoint or device")
    hint: str


class DeviceRead(BaseModel):
    device_id: str
    unit_id: int
    profile: str
    ok: bool
    elapsed_ms: float
    values: list[ValueOut]
    no_value: list[NoValueOut] = Field(description="quantities the meter reports as having no value (not failures)")
    failure: FailureOut | None


class DecodedReading(BaseModel):
    device_id: str
    ts: datetime
    ts_ms: int
    registered: bool = Field(description="the device is registered; if not, auto_register decides its fate")
    values: list[ValueOut]


class DryRunOut(BaseModel):
    kind: str
    connection_id: str
    devices: list[DeviceRead] = Field(default_factory=list, description="Modbus: each device read once")
    readings: list[DecodedReading] = Field(default_factory=list, description="MQTT: what the sample decodes to")
    errors: list[str] = Field(default_factory=list, description="MQTT: why the sample would be dead-lettered")
