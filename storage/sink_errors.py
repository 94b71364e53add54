"""Why a sink refused a batch, translated once at the boundary: the data, or the way to it.

A *data* error is caused by what is in the batch (PostgreSQL classes 22 data exception, 23
integrity constraint violation, 54 program limit exceeded; Kafka refusing one record as too large
or corrupt): the stage splits the batch and dead-letters only the records that fail alone.
Everything else is *transient* — the database or broker is away, restarting, overloaded, or locked
(OSError, asyncpg connection and interface errors, CannotConnectNow, Kafka transport) — and the
batch is retried as a whole with backoff. An error we do not recognise is treated as transient on
purpose: splitting on a systemic fault (a missing table, a permission) would dead-letter the whole
stream, while retrying it only delays it and shows in the stage's `last_error`.
"""
from __future__ import annotations

from enum import Enum

import asyncpg
from confluent_kafka import KafkaError, KafkaException

from storage.kafka.producer import RECORD_ERRORS, DeliveryError

_PG_DATA = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError)


class SinkError(Enum):
    DATA = "data"
    TRANSIENT = "transient"


def classify(err: BaseException) -> SinkError:
    if isinstance(err, _PG_DATA):
        return SinkError.DATA
    if isinstance(err, DeliveryError):
        kafka_error: object = err.error
    elif isinstance(err, KafkaException):
        kafka_error = err.args[0]
    else:
        return SinkError.TRANSIENT
    if isinstance(kafka_error, KafkaError) and kafka_error.code() in RECORD_ERRORS:
        return SinkError.DATA
    return SinkError.TRANSIENT


def describe(err: BaseException) -> str:
    """One line for a log or a dead-letter reason: the error's class and its first line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__
