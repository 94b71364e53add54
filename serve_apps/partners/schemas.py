"""Request and response bodies of the partners API (the partner document itself is meterray.partners)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PartnerOut(BaseModel):
    partner_id: str
    version: int
    updated_at: datetime
    config: dict[str, Any] = Field(description="the stored document; every secret shows as ***")


class PartnerList(BaseModel):
    partners: list[PartnerOut]
    unreadable: dict[str, str] = Field(default_factory=dict, description="partners stored but not readable "
                                       "(a changed secret key, a document later rules refuse), with why")


class VersionOut(BaseModel):
    version: int
    deleted: bool
    created_at: datetime


class DryRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="the retrieval path to try")
    config: dict[str, Any] | None = Field(None, description="a changed partner document to try instead of the "
                                                             "stored one (secrets sent as *** keep the stored ones)")
    sample: str | None = Field(None, description="a payload in the path's format to map instead of fetching a page")
    since: datetime | None = Field(None, description="window start (default: the path's initial lookback)")
    until: datetime | None = Field(None, description="window end, exclusive (default: now)")


class DryRunOut(BaseModel):
    fetched: bool = Field(description="true: one page was fetched from the partner; false: the sample was mapped")
    records: int
    readings: list[dict[str, Any]]
    status: list[dict[str, Any]]
    refused: list[dict[str, Any]]
    next_page: dict[str, Any] | None
    errors: list[str]


class BackfillIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")


class BackfillOut(BaseModel):
    id: int
    partner_id: str
    path: str
    since: datetime
    until: datetime
    status: str
    detail: str | None
    pages: int
    records: int
    device_id: str | None = None  # the device and quantity whose gap the scan asked for; None: asked by hand
    quantity: str | None = None


class WebhookOut(BaseModel):
    records: int
    readings: int
    status: int
    refused: int


class CursorOut(BaseModel):
    path: str
    watermark: datetime = Field(description="the end of the last complete run: data before it has been fetched")
    run: dict[str, Any] | None = Field(description="the run in progress: its window (`since`, `until`, epoch ms) "
                                                   "and the next page (`state`); null between runs")
    updated_at: datetime
