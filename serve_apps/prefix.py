"""An application mounted at a route prefix answers the bare prefix itself (no redirect to prefix + /)."""
from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class PrefixIsRoot:
    """`GET /api/v1/me` is the root of the application mounted at /api/v1/me (likewise /api/v1/notifications):
    Starlette would answer it with a redirect to `/api/v1/me/`; this serves it as `/` directly."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
        await self.app(scope, receive, send)
