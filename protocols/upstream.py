"""Typed failures of the external services the users service calls (api-fns, the supply-contract check).

Clients translate every library error and every documented error answer into one of these, once, at
their boundary. Messages never quote a request URL, header or key (api-fns takes its key in the query
string, so an aiohttp error's text would carry it).
"""
from __future__ import annotations


class UpstreamError(Exception):
    """A provider failure: nothing is known about the thing asked for. `retriable`: the same request may
    succeed later (outage, rate limit); otherwise it needs an operator (bad key, quota)."""

    retriable = False

    def __init__(self, service: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message
        self.retry_after_s = retry_after_s


class BadKey(UpstreamError):
    """The key is refused (wrong, expired, or not allowed from this IP address)."""


class QuotaExhausted(UpstreamError):
    """The paid period's quota of this method is spent."""


class RateLimited(UpstreamError):
    retriable = True


class Unavailable(UpstreamError):
    """Timeout, connection refused, 5xx, or an answer that is not the documented format."""

    retriable = True


class InvalidRequest(UpstreamError):
    """The provider refuses what we asked (a malformed value): the caller's input, not an outage."""
