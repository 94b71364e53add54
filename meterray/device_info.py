"""What other services know of a device: the record of the compacted `devices` topic. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    name: str
    protocol: str
    profile: str
    organisation_id: UUID | None  # None: nobody owns it yet (platform staff only)
    timezone: str | None  # IANA; None: the platform's default (METERRAY_DEFAULT_TIMEZONE)
