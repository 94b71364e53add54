"""The users API's refusals, translated once: field errors in FastAPI's own validation shape
(`{"detail": [{"loc": ["body", field], "msg", "type"}]}`), so a client reads one shape for every 422, and
external outages as 503 with Retry-After."""
from __future__ import annotations

import logging
import math

from fastapi import HTTPException

from protocols.upstream import BadKey, QuotaExhausted, UpstreamError

log = logging.getLogger("meterray.users")

DEFAULT_RETRY_S = 60


def field_error(field: str, message: str, kind: str, status: int = 422) -> HTTPException:
    return HTTPException(status, [{"loc": ["body", field], "msg": message, "type": kind}])


def fields_error(problems: list[tuple[str, str, str]]) -> HTTPException:
    """Every problem at once: (field, message, type)."""
    return HTTPException(422, [{"loc": ["body", f], "msg": m, "type": t} for f, m, t in problems])


def upstream_unavailable(err: UpstreamError, check: str) -> HTTPException:
    """503: nothing was created; the same request can be sent again later. Operators see why in the log
    (the error's text never holds a key or a URL)."""
    if isinstance(err, (BadKey, QuotaExhausted)):
        log.error("%s failed and needs an operator: %s", check, err)
        retry = 3600
    else:
        log.warning("%s unavailable: %s", check, err)
        retry = math.ceil(err.retry_after_s) if err.retry_after_s else DEFAULT_RETRY_S
    return HTTPException(
        503, {"message": f"the {check} is unavailable at the moment; nothing was registered, send the same "
                         f"request again in {retry} s", "service": err.service, "retry_after_s": retry},
        headers={"Retry-After": str(retry)})
