"""Who may see which forecasts: the API's one rule set (meterray.access, READ_DEVICES) applied to a device
or an organisation. Another organisation's device or organisation answers 404, as a missing one does."""
from __future__ import annotations

from uuid import UUID

import asyncpg
from fastapi import HTTPException

from meterray.access import Action
from meterray.identity import Principal
from serve_apps.auth import scope_of
from storage.postgres import devices
from storage.postgres import forecasting as repo


async def visible_device(db: asyncpg.Pool, who: Principal, device_id: str) -> None:
    scope = scope_of(who, Action.READ_DEVICES)
    if await devices.get_device(db, device_id, organisation_id=scope.organisation_id) is None:
        raise HTTPException(404, f"no device {device_id!r}")


async def organisation_device_ids(db: asyncpg.Pool, who: Principal, organisation_id: UUID) -> list[str]:
    if not scope_of(who, Action.READ_DEVICES).covers(organisation_id):
        raise HTTPException(404, f"no organisation {organisation_id}")
    return await repo.organisation_devices(db, organisation_id)
