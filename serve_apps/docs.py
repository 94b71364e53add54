"""/docs and /redoc with no CDN: FastAPI's pages load Swagger UI and ReDoc from jsdelivr.net and are blank
on a machine without internet access (as many utility networks are). The same pages here reference only
the application's own URLs, under its route prefix; the assets are the files the `fastapi-offline`
package ships (Swagger UI, ReDoc, favicon), served from the installed package.

    api = FastAPI(title=..., docs_url=None, redoc_url=None)   # FastAPI's CDN pages off
    offline_docs(api)
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/static/docs"
DOCS, REDOC, OAUTH2_REDIRECT = "/docs", "/redoc", "/docs/oauth2-redirect"


def assets_dir() -> Path:
    """The installed package's folder of Swagger UI and ReDoc files."""
    return Path(str(files("fastapi_offline") / "static"))


def offline_docs(api: FastAPI) -> None:
    if api.docs_url is not None or api.redoc_url is not None:
        raise ValueError("create the app with docs_url=None, redoc_url=None: its CDN pages would win")
    api.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    def root(request: Request) -> str:  # the route prefix Serve mounted the app at ("" at /)
        return str(request.scope.get("root_path", "")).rstrip("/")

    @api.get(DOCS, include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        r = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{r}{api.openapi_url}", title=f"{api.title} — Swagger UI",
            swagger_js_url=f"{r}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{r}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{r}{ASSETS}/favicon.png", oauth2_redirect_url=f"{r}{OAUTH2_REDIRECT}",
            init_oauth=api.swagger_ui_init_oauth, swagger_ui_parameters=api.swagger_ui_parameters)

    @api.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @api.get(REDOC, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        r = root(request)
        return get_redoc_html(openapi_url=f"{r}{api.openapi_url}", title=f"{api.title} — ReDoc",
                              redoc_js_url=f"{r}{ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{r}{ASSETS}/favicon.png", with_google_fonts=False)
