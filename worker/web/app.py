"""`create_app(services)`: the one ASGI app of `fpcancel serve`, the API and the dashboard.

Nothing is built at import time: `fpcancel serve` calls `create_app(build_services(settings))`;
tests hand it services on SQLite and the memory broker. The interactive docs (/docs, /redoc)
are off because they load scripts from a CDN; /openapi.json describes everything.
"""

from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from fpcancel import __version__
from fpcancel.web import api, dashboard, health
from fpcancel.web.auth import KeyChecker, SignInRequired
from fpcancel.web.errors import install_error_handlers
from fpcancel.web.middleware import HttpLayer
from fpcancel.web.services import WebServices

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

DESCRIPTION = """Cancel orders at Front Payment from any language.

Send `Authorization: Bearer <key>` (make one with `fpcancel keys create --name N --scope S`).
Scopes: `enqueue` creates cancellations, `read` reads jobs, stats and events, `ops` does
everything. Errors are JSON: `{"error": "...", "details": [...]}`.
"""


def templates() -> Environment:
    """Jinja2 with autoescaping on for every template: text from outside is always escaped."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def create_app(services: WebServices) -> FastAPI:
    app = FastAPI(
        title="fpcancel",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.services = services
    app.state.key_checker = KeyChecker(services)
    app.state.templates = templates()
    install_error_handlers(app)
    app.add_exception_handler(SignInRequired, _to_signin)
    app.include_router(health.router)
    app.include_router(api.router, dependencies=[])
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(HttpLayer)
    _document_auth(app)
    return app


async def _to_signin(request: Request, exc: Exception) -> Response:
    """A dashboard page without a live ops session: sign in, then come back (GETs only)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = "/"
    return RedirectResponse("/signin?" + urlencode({"next": target}), status_code=303)


def _document_auth(app: FastAPI) -> None:
    """Say in /openapi.json that /v1/ takes a bearer key."""
    original = app.openapi
    scheme = HTTPBearer(description="An fpcancel API key (`fpcancel keys create`)")

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["bearer"] = scheme.model.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
