"""Request and response models of the notifications API (separate from storage rows)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from meterray.notify import Kind


class NotificationOut(BaseModel):
    id: int
    kind: str = Field(description="device_offline, device_degraded, device_stale, device_online or data_quality")
    device_id: str
    title: str
    body: str
    event_ts: datetime = Field(description="when it happened (the device event's time)")
    created_at: datetime
    read: bool
    read_at: datetime | None
    suppressed: int = Field(description="like events of this device after this one that were not sent (throttled)")


class NotificationPage(BaseModel):
    notifications: list[NotificationOut] = Field(description="unread first, then read; newest first within each")
    unread: int = Field(description="the caller's unread notifications in all")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


class ReadAllOut(BaseModel):
    marked_read: int


class PreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    in_app: bool = Field(True, description="in-app notifications (the cabinet)")
    email: bool = Field(True, description="e-mail notifications")
    muted_kinds: list[Kind] = Field(default_factory=list, max_length=len(Kind),
                                    description="kinds the caller does not want on any channel")


class PreferencesOut(BaseModel):
    in_app: bool
    email: bool
    muted_kinds: list[str]


class WebhookOut(BaseModel):
    status: str = "ok"
    events: int = Field(description="delivery-status events that were new")
    updated: int = Field(description="e-mails whose delivery status changed")
