"""The documentation pages, /docs (Swagger UI) and /redoc (ReDoc), on scripts and styles the
service serves itself: FastAPI's own pages load them from a CDN and stay blank without internet.

FastAPI's self-hosting recipe ("Custom Docs UI Static Assets"), with the files the
fastapi-offline package ships: Swagger UI's and ReDoc's bundles as published on npm, unmodified.
"""

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs/static"
# Nothing from elsewhere, not even what the scripts themselves would load: ReDoc's menu shows
# Redocly's logo from Redocly's CDN whatever its options. Allowed besides the service's files:
# the Swagger page's inline start-up script, the styles both UIs inject, the images Swagger UI's
# styles inline, and ReDoc's search worker (started from a blob).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
                           "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                           "worker-src blob:")


def _root(request: Request) -> str:
    # The path prefix a proxy strips (uvicorn --root-path): the pages' URLs need it, as in
    # FastAPI's own pages.
    return request.scope.get("root_path", "").rstrip("/")


def _self_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def include(app: FastAPI) -> None:
    """Serve /docs, its OAuth2 redirect page, /redoc and their files; for an app made with
    docs_url=None and redoc_url=None, so that FastAPI adds no CDN pages of its own."""
    app.mount(ASSETS_PATH, StaticFiles(directory=files("fastapi_offline") / "static"),
              name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        assets = root + ASSETS_PATH
        return _self_only(get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css", swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=f"{root}{app.swagger_ui_oauth2_redirect_url}"))

    @app.get(app.swagger_ui_oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        assets = root + ASSETS_PATH
        return _self_only(get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js", redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False))
