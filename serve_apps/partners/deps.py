"""What the partners routes need besides the database: settings, the secrets cipher, a Kafka producer
(opened on the first webhook, one per replica), and who may manage partners (meterray.access:
partners:manage, platform staff)."""
from __future__ import annotations

import asyncio
from typing import Annotated

from cryptography.fernet import Fernet
from fastapi import Depends

from meterray.access import Scope
from meterray.settings import Settings
from serve_apps.auth import PartnersScope
from storage.kafka.producer import AsyncProducer
from storage.secrets import cipher

_settings: Settings | None = None
_producer: AsyncProducer | None = None
_lock = asyncio.Lock()


def configure_partners(settings: Settings) -> None:
    global _settings
    _settings = settings


def get_settings() -> Settings:
    if _settings is None:
        raise RuntimeError("configure_partners() was not called in this replica")
    return _settings


def get_cipher() -> Fernet:
    return cipher(get_settings())


async def get_producer() -> AsyncProducer:
    global _producer
    async with _lock:
        if _producer is None:
            _producer = AsyncProducer(get_settings().kafka_bootstrap, **{"message.timeout.ms": 30_000})
            await _producer.start()
    return _producer


async def close_producer() -> None:
    global _producer
    if _producer is not None:
        await _producer.close()
        _producer = None


async def partner_admin(scope: PartnersScope) -> Scope:
    """Who manages partners: 401 without a valid access token, 403 unless platform staff. Partners have no
    owning organisation (their meters may belong to several), so there is no narrower scope to apply."""
    return scope


Cipher = Annotated[Fernet, Depends(get_cipher)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Producer = Annotated[AsyncProducer, Depends(get_producer)]
PartnerAdmin = Annotated[Scope, Depends(partner_admin)]
