"""``/docs``: Swagger UI served from the installed package, so it works offline and air-gapped.

FastAPI's default page loads Swagger UI from a CDN and is blank without internet access. The
assets come from ``swagger-ui-bundle`` (part of the ``server`` extra) and are served under
``/docs/assets``; the OpenAPI document stays at ``/openapi.json``. ReDoc, CDN-only, is off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "install_docs", "swagger_assets"]

ASSETS = "/docs/assets"


def swagger_assets() -> Path | None:
    """The directory of the packaged Swagger UI files, or None when the bundle is missing."""
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]
    except ImportError:
        return None
    return Path(swagger_ui_path)


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (Swagger UI) and its assets from the package; create the app with
    ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not also routed."""
    assets = swagger_assets()
    if assets is not None:
        app.mount(ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        if assets is None:
            return HTMLResponse(
                "<p>The API documentation page needs the swagger-ui-bundle package:"
                " <code>pip install 'tenantflow[server]'</code>. The OpenAPI document is at"
                ' <a href="openapi.json">/openapi.json</a>.</p>',
                status_code=503,
            )
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} — API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png",
        )
