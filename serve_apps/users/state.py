"""Per-replica state of the users service (configured in the deployment's constructor, like
serve_apps.deps): its settings, the checks in force and the external clients."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from meterray.auth_backends import AuthBackends
from meterray.settings import Settings
from serve_apps.users.checks import ExternalChecks


@dataclass(frozen=True)
class UsersState:
    settings: Settings
    backends: AuthBackends
    checks: ExternalChecks
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


_state: UsersState | None = None


def configure_users(settings: Settings, backends: AuthBackends) -> UsersState:
    global _state
    proxies = tuple(ipaddress.ip_network(p.strip()) for p in settings.trusted_proxies.split(",") if p.strip())
    _state = UsersState(settings, backends, ExternalChecks(settings, backends), proxies)
    return _state


def get_state() -> UsersState:
    if _state is None:
        raise RuntimeError("configure_users() was not called in this replica")
    return _state


State = Annotated[UsersState, Depends(get_state)]


def client_address(request: Request, state: UsersState) -> str:
    """The caller's address: the peer's, or the last X-Forwarded-For hop a trusted proxy added (behind an
    ingress every peer is the ingress, so per-address throttling needs the forwarded address)."""
    peer = request.client.host if request.client else "unknown"
    try:
        trusted = any(ipaddress.ip_address(peer) in net for net in state.trusted_proxies)
    except ValueError:
        trusted = False
    forwarded = request.headers.get("x-forwarded-for")
    if trusted and forwarded:
        hop = forwarded.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(hop))
        except ValueError:
            raise HTTPException(400, "X-Forwarded-For is not an address") from None
    return peer
