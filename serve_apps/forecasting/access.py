"""Who may see what: a customer sees its own organisation's devices; platform staff (an admin with no
organisation) sees all. Another organisation's device answers 404, as a missing one does."""
from __future__ import annotations

from uuid import UUID

import asyncpg
from fastapi import HTTPException

from meterray.identity import Principal, Role
from storage.postgres import forecasting as repo


def platform_staff(who: Principal) -> bool:
    return who.role is Role.ADMIN and who.organisation_id is None


async def visible_device(db: asyncpg.Pool, who: Principal, device_id: str) -> None:
    exists, org = await repo.device_organisation(db, device_id)
    if not exists or not (platform_staff(who) or (org is not None and org == who.organisation_id)):
        raise HTTPException(404, f"no device {device_id!r}")


async def organisation_device_ids(db: asyncpg.Pool, who: Principal, organisation_id: UUID) -> list[str]:
    if not (platform_staff(who) or organisation_id == who.organisation_id):
        raise HTTPException(404, f"no organisation {organisation_id}")
    return await repo.organisation_devices(db, organisation_id)
