"""Routers of the partners API; every query lives in storage.postgres.partners.

Secrets never leave: a partner is returned with each secret as `***`, and `***` sent back on PUT
keeps the stored secret. A configuration that does not validate gets a 422 listing every problem.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Body, Header, HTTPException, Request, Response

from meterray.config import ConfigError
from meterray.domain import PollFailure, ReadingBatch
from meterray.partners import PartnerConfig, PathConfig, validate_partner
from protocols.http.client import HttpFailure, PartnerClient, RateBudget
from protocols.http.documents import DocumentError, parse
from protocols.http.mapping import Mapped, map_records
from protocols.http.paging import Window, build_request, next_state
from protocols.http.signing import SIGNATURE_HEADER, verify
from serve_apps.deps import Db
from serve_apps.partners.deps import AppSettings, Cipher, PartnerAdmin, Producer
from serve_apps.partners.schemas import (
    BackfillIn,
    BackfillOut,
    CursorOut,
    DryRunIn,
    DryRunOut,
    PartnerList,
    PartnerOut,
    VersionOut,
    WebhookOut,
)
from storage.kafka import codec, topics
from storage.kafka.producer import OutMessage
from storage.postgres import partners as repo
from storage.secrets import SecretKeyError

partners_router = APIRouter(prefix="/api/v1/partners", tags=["partners"])
MAX_WEBHOOK_BYTES = 4 * 2**20
# The partner document is validated by meterray.partners (every problem at once), not by FastAPI.
PartnerDoc = Annotated[dict[str, Any], Body(description="a partner document (meterray.partners.PartnerConfig)")]


def _out(p: repo.StoredPartner) -> PartnerOut:
    return PartnerOut(partner_id=p.config.partner_id, version=p.version, updated_at=p.updated_at,
                      config=p.config.public())


def _problems(err: ConfigError) -> HTTPException:
    return HTTPException(422, {"message": "invalid partner configuration", "problems": err.problems})


@partners_router.get("", response_model=PartnerList)
async def list_partners(db: Db, f: Cipher, _: PartnerAdmin) -> PartnerList:
    stored, problems = await repo.list_partners(db, f)
    return PartnerList(partners=[_out(p) for p in stored], unreadable=problems)


@partners_router.post("", response_model=PartnerOut, status_code=201)
async def create_partner(db: Db, f: Cipher, _: PartnerAdmin, doc: PartnerDoc) -> PartnerOut:
    try:
        stored, _new = await repo.save_partner(db, doc, f, expect_new=True)
    except ConfigError as err:
        raise _problems(err) from None
    except FileExistsError as err:
        raise HTTPException(409, str(err)) from None
    return _out(stored)


@partners_router.get("/{partner_id}", response_model=PartnerOut)
async def get_partner(partner_id: str, db: Db, f: Cipher, _: PartnerAdmin) -> PartnerOut:
    return _out(await _stored(db, f, partner_id))


@partners_router.put("/{partner_id}", response_model=PartnerOut)
async def replace_partner(partner_id: str, db: Db, f: Cipher, _: PartnerAdmin,
                          doc: PartnerDoc) -> PartnerOut:
    if doc.get("partner_id", partner_id) != partner_id:
        raise HTTPException(422, f"partner_id {doc.get('partner_id')!r} in the body differs from {partner_id!r} "
                                 "in the URL; a partner cannot be renamed (create the new one, delete the old)")
    try:
        stored, _new = await repo.save_partner(db, {**doc, "partner_id": partner_id}, f, expect_new=False)
    except ConfigError as err:
        raise _problems(err) from None
    except LookupError as err:
        raise HTTPException(404, str(err)) from None
    return _out(stored)


@partners_router.delete("/{partner_id}", status_code=204)
async def delete_partner(partner_id: str, db: Db, _: PartnerAdmin) -> Response:
    if not await repo.delete_partner(db, partner_id):
        raise HTTPException(404, f"no partner {partner_id!r}")
    return Response(status_code=204)


@partners_router.get("/{partner_id}/versions", response_model=list[VersionOut])
async def partner_versions(partner_id: str, db: Db, _: PartnerAdmin) -> list[VersionOut]:
    rows = await repo.versions(db, partner_id)
    if not rows:
        raise HTTPException(404, f"no partner {partner_id!r}")
    return [VersionOut(**dict(r)) for r in rows]


@partners_router.get("/{partner_id}/cursors", response_model=list[CursorOut])
async def partner_cursors(partner_id: str, db: Db, f: Cipher, _: PartnerAdmin) -> list[CursorOut]:
    """Where each retrieval path stands (saved only after Kafka confirmed the page before)."""
    await _stored(db, f, partner_id)
    out = []
    for r in await repo.list_cursors(db, partner_id):
        c = orjson.loads(r["cursor"])
        out.append(CursorOut(path=r["path"], watermark=datetime.fromtimestamp(c["watermark"] / 1000, timezone.utc),
                             run=c.get("run"), updated_at=r["updated_at"]))
    return out


@partners_router.post("/{partner_id}/dry-run", response_model=DryRunOut)
async def dry_run(partner_id: str, body: DryRunIn, db: Db, f: Cipher, _: PartnerAdmin) -> DryRunOut:
    """Fetch one page (or map `sample`) and return what the mapping makes of it; writes nothing."""
    stored = await _stored(db, f, partner_id)
    config = stored.config
    if body.config is not None:
        try:
            config = validate_partner({**body.config, "partner_id": partner_id}, stored.config)
        except ConfigError as err:
            raise _problems(err) from None
    path = _path(config, body.path)
    now_ms = int(time.time() * 1000)
    window = Window(int(body.since.timestamp() * 1000) if body.since else now_ms - int(path.initial_lookback_s * 1000),
                    int(body.until.timestamp() * 1000) if body.until else now_ms)
    errors: list[str] = []
    records: list[Any] = []
    nxt = None
    if body.sample is not None:
        raw, doc_headers, url = body.sample.encode(), {}, config.base_url
    else:
        client = PartnerClient(config)
        try:
            req = build_request(config.base_url, path, window, {})
            resp = await client.fetch(req, RateBudget(config.rate.requests_per_minute))
            raw, doc_headers, url = resp.body, resp.headers, resp.url
        except HttpFailure as err:
            return DryRunOut(fetched=True, records=0, readings=[], status=[], refused=[], next_page=None,
                             errors=[f"{err.kind.value}: {err}"])
        finally:
            await client.close()
    try:
        doc, records = parse(raw, path.format, path.records)
        nxt = next_state(path, {}, doc, doc_headers, len(records), url)
    except DocumentError as err:
        errors.append(str(err))
    mapped = map_records(records, path.readings, path.status, config.device_map(), f"partner://{partner_id}/dry-run")
    return DryRunOut(fetched=body.sample is None, records=len(records), next_page=nxt, errors=errors,
                     readings=[_batch(b) for b in mapped.batches if path.readings is not None],
                     status=[_status(x) for x in _items(mapped) if path.status is not None],
                     refused=[{"device_id": d, "record": raw_rec.decode(errors="replace"), "reason": reason}
                              for d, raw_rec, reason in mapped.refused])


@partners_router.post("/{partner_id}/webhook", response_model=WebhookOut, status_code=202)
async def webhook(partner_id: str, path: str, request: Request, db: Db, f: Cipher, settings: AppSettings,
                  producer: Producer,
                  signature: str | None = Header(None, alias=SIGNATURE_HEADER)) -> WebhookOut:
    """A partner pushes records of `path` (its format and mapping); the body is signed with
    HMAC-SHA256 of the partner's webhook secret (`X-Meterray-Signature: sha256=<hex>`). Answers once
    Kafka confirmed every record; refused records go to the dead-letter topic with their reason."""
    body = await request.body()
    if len(body) > MAX_WEBHOOK_BYTES:
        raise HTTPException(413, f"a push is at most {MAX_WEBHOOK_BYTES} bytes")
    stored = await _stored(db, f, partner_id, missing=401)  # an unknown partner learns nothing more
    config = stored.config
    if config.webhook_secret is None:
        raise HTTPException(401, "this partner has no webhook secret: pushes are not accepted")
    if not verify(config.webhook_secret.get_secret_value(), body, signature):
        raise HTTPException(401, f"missing or wrong {SIGNATURE_HEADER}: sha256=<hex HMAC-SHA256 of the body>")
    p = _path(config, path)
    try:
        _doc, records = parse(body, p.format, p.records)
    except DocumentError as err:
        raise HTTPException(422, f"the body is not {p.format} as path {path!r} expects: {err}") from None
    mapped = map_records(records, p.readings, p.status, config.device_map(), f"partner://{partner_id}/{path}/webhook")
    await _send(producer, settings.topic(topics.READINGS_RAW), settings.topic(topics.READINGS_DLQ),
                settings.kafka_partitions, mapped, partner_id, path)
    return WebhookOut(records=len(records), readings=mapped.readings, refused=len(mapped.refused),
                      status=len(mapped.failures) + (len(mapped.batches) if p.status else 0))


@partners_router.post("/{partner_id}/backfills", response_model=BackfillOut, status_code=202)
async def add_backfill(partner_id: str, body: BackfillIn, db: Db, f: Cipher, _: PartnerAdmin) -> BackfillOut:
    stored = await _stored(db, f, partner_id)
    _path(stored.config, body.path)
    start, end = (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t for t in (body.start, body.end))
    if start >= end:
        raise HTTPException(422, "`from` must be earlier than `to`")
    bid = await repo.add_backfill(db, partner_id, body.path, start, end)
    return await get_backfill(partner_id, bid, db, _)


@partners_router.get("/{partner_id}/backfills/{backfill_id}", response_model=BackfillOut)
async def get_backfill(partner_id: str, backfill_id: int, db: Db, _: PartnerAdmin) -> BackfillOut:
    row = await repo.get_backfill(db, backfill_id)
    if row is None or row["partner_id"] != partner_id:
        raise HTTPException(404, f"no backfill {backfill_id} of partner {partner_id!r}")
    return BackfillOut(**dict(row))


async def _stored(db: asyncpg.Pool, f: Any, partner_id: str, missing: int = 404) -> repo.StoredPartner:
    try:
        stored = await repo.get_partner(db, partner_id, f)
    except (SecretKeyError, ConfigError) as err:  # stored before a rule or a key changed: PUT a new document
        raise HTTPException(409, f"partner {partner_id!r} is stored but cannot be read ({err}); PUT a complete "
                                 "document, with its secrets, to replace it") from None
    if stored is None:
        raise HTTPException(missing, f"no partner {partner_id!r}" if missing == 404 else "unknown partner")
    return stored


def _path(config: PartnerConfig, name: str) -> PathConfig:
    try:
        return config.path(name)
    except KeyError as err:
        raise HTTPException(404, str(err.args[0])) from None


async def _send(producer: Any, raw_topic: str, dlq_topic: str, parts: int, mapped: Mapped, partner_id: str,
                path: str) -> None:
    out: list[OutMessage] = [(raw_topic, topics.partition_for(x.device_id, parts), x.device_id.encode(),
                              codec.encode(x)) for x in _items(mapped)]
    out += [(dlq_topic, topics.partition_for(d or partner_id, parts), (d or partner_id).encode(),
             codec.encode_dead_letter(reason, raw, stage="partner-webhook", partner=partner_id, path=path))
            for d, raw, reason in mapped.refused]
    errors = await producer.deliver(out)
    failed = sum(e is not None for e in errors)
    if failed:  # nothing is acknowledged to the partner unless Kafka has it: the partner pushes again
        raise HTTPException(503, f"Kafka did not take {failed} of {len(out)} records; push again")


def _batch(b: ReadingBatch) -> dict[str, Any]:
    return {"device_id": b.device_id, "ts_ms": b.ts_ms,
            "values": [{"quantity": v.quantity, "value": v.value, "unit": v.unit} for v in b.values]}


def _status(x: ReadingBatch | PollFailure) -> dict[str, Any]:
    if isinstance(x, PollFailure):
        return {"device_id": x.device_id, "ts_ms": x.ts_ms, "kind": x.kind.value, "detail": x.detail}
    return {"device_id": x.device_id, "ts_ms": x.ts_ms, "kind": "online", "detail": ""}


def _items(mapped: Mapped) -> list[ReadingBatch | PollFailure]:
    return [*mapped.batches, *mapped.failures]
