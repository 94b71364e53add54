"""Structured logs: every actor process writes one JSON object per line (Ray keeps each worker's
stderr in its session's logs/worker-*.err, and the dashboard shows it per actor).

A line always has `ts` (UTC, ISO 8601), `level`, `logger`, `message`, `pid` and, once the actor said who
it is, `actor` (its name: modbus-shard-3); a log call that concerns one device or one connection
passes it as `extra={"device_id": …}` / `extra={"connection_id": …}` and the line carries it as a field,
so a log search for one meter finds every line about it.
"""
from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any

import orjson

# Fields a log call may give through `extra=`, carried into the JSON line when present.
CONTEXT_FIELDS = ("device_id", "connection_id", "group", "topic", "partition")


class JsonFormatter(logging.Formatter):
    def __init__(self, actor: str | None = None) -> None:
        super().__init__()
        self._actor = actor

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if self._actor is not None:
            doc["actor"] = self._actor
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str, actor: str | None = None) -> None:
    """JSON lines on stderr for this process (the one helper every actor calls in its constructor)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(actor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
