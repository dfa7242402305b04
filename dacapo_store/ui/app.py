"""The dashboard's web application: read-only pages and JSON endpoints over one store.

Routes (all GET; any other method is answered 405):

* ``/``: the runs page; ``/runs/rows``: its table rows (HTML), fetched again while it is open;
  ``/api/runs``: the same as JSON;
* ``/run?name=RUN`` and ``/api/run?name=RUN``: one run (``keep_last``, ``keep_every``,
  ``keep_best`` choose the retention rules whose kept checkpoints are marked);
* ``/compare?run=A&run=B&dataset=D&criterion=C`` and ``/api/compare?...``: runs on one plot;
* ``/static/...``: the style sheet, the page scripts and Plotly's ``plotly.min.js`` from the
  installed ``plotly`` package.

Pages are Jinja2 templates with autoescaping; no user string reaches a page unescaped or a
script inline (scripts read JSON from the endpoints, whose ``<``, ``>`` and ``&`` are escaped
as ``\\u003c``...). Every response carries a Content-Security-Policy that allows scripts from
this server only. Endpoints are plain functions, which Starlette runs in its thread pool (store calls block).
Store errors are answered 503 with the store's message, whose passwords the
stores already redact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from plotly.offline import get_plotlyjs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import DacapoStoreError
from ..maintenance.retention import RetentionPolicy
from .commands import prune_dry_run_command
from .formatting import FILTERS
from .queries import DashboardStores, UnknownRunError, compare_curves, run_detail, runs_overview, score_pairs

PACKAGE_DIR = Path(__file__).parent
DEFAULT_ACTIVE_MINUTES = 10.0
REFRESH_SECONDS = 10
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
"""Headers on every response. Plotly sets inline styles on its plot elements (hence
``style-src 'unsafe-inline'``); no inline script runs."""


class SafeJSONResponse(Response):
    """JSON with NaN and infinities as ``null`` and ``<``, ``>``, ``&`` escaped, so that the
    text is safe wherever it lands (also inside a ``<script>``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def plotly_script() -> Callable[[Request], Any]:
    """The endpoint serving ``plotly.min.js`` from the installed ``plotly`` package (read once;
    browsers may cache it for a day)."""
    body = get_plotlyjs().encode()

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type="text/javascript", headers={"cache-control": "public, max-age=86400"})

    return endpoint


def create_app(
    stores: DashboardStores,
    active_minutes: float = DEFAULT_ACTIVE_MINUTES,
    clock: Callable[[], float] = time.time,
    refresh_seconds: float = REFRESH_SECONDS,
) -> Starlette:
    """The dashboard of ``stores`` (opened read-only by the caller): a run looks active when
    its newest checkpoint was stored within ``active_minutes`` of ``clock()``; the runs page
    fetches its rows again every ``refresh_seconds``. ``app.state.stores`` holds ``stores``."""
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    templates.filters.update(FILTERS)

    def page(name: str, status_code: int = 200, nav: str = "", **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(
            nav=nav, store=stores.label, refresh_seconds=refresh_seconds, active_minutes=active_minutes, now=clock(), **context
        )
        return HTMLResponse(html, status_code=status_code)

    def overview() -> list[dict[str, Any]]:
        return runs_overview(stores, clock(), active_minutes)

    def runs_page(request: Request) -> Response:
        return page("runs.html", nav="runs", runs=overview())

    def runs_rows(request: Request) -> Response:
        return page("runs_rows.html", runs=overview())

    def runs_json(request: Request) -> Response:
        return SafeJSONResponse({"store": stores.label, "active_minutes": active_minutes, "runs": overview()})

    def run_page(request: Request) -> Response:
        policy = retention_policy(request)
        detail = run_detail_or_error(request, policy)
        prune = prune_dry_run_command(
            detail["name"], policy.keep_last, policy.keep_every, policy.keep_best, stores.label
        )
        return page("run.html", run=detail, policy=policy, prune_command=prune)

    def run_json(request: Request) -> Response:
        return SafeJSONResponse(run_detail_or_error(request, retention_policy(request)))

    def run_detail_or_error(request: Request, policy: RetentionPolicy) -> dict[str, Any]:
        name = request.query_params.get("name")
        if not name:
            raise HTTPException(400, "which run? (/run?name=RUN)")
        try:
            return run_detail(stores, name, policy)
        except UnknownRunError as error:
            raise HTTPException(404, str(error)) from None
        except (TypeError, ValueError) as error:
            raise HTTPException(400, str(error)) from None

    def comparison(request: Request) -> tuple[list[str], str | None, str | None, list[dict[str, Any]]]:
        runs = request.query_params.getlist("run")
        dataset, criterion = request.query_params.get("dataset"), request.query_params.get("criterion")
        if not runs or not dataset or not criterion:
            return runs, dataset, criterion, []
        try:
            return runs, dataset, criterion, compare_curves(stores, runs, dataset, criterion)
        except (TypeError, ValueError) as error:
            raise HTTPException(400, str(error)) from None

    def compare_page(request: Request) -> Response:
        runs, dataset, criterion, _ = comparison(request)
        return page(
            "compare.html", nav="compare", all_runs=[row["name"] for row in overview()], pairs=score_pairs(stores),
            chosen=runs, dataset=dataset, criterion=criterion, query=request.url.query,
        )

    def compare_json(request: Request) -> Response:
        runs, dataset, criterion, curves = comparison(request)
        if not curves:
            raise HTTPException(400, "give two or more run=RUN, and dataset=D and criterion=C")
        return SafeJSONResponse({"dataset": dataset, "criterion": criterion, "runs": curves})

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if request.url.path.startswith("/api/"):
            return SafeJSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)
        return page("error.html", status_code=error.status_code, code=error.status_code, message=error.detail)

    async def store_error(request: Request, error: Exception) -> Response:
        return await http_error(request, HTTPException(503, f"the store could not answer: {error}"))

    routes = [
        Route("/", runs_page, methods=["GET"]),
        Route("/runs/rows", runs_rows, methods=["GET"]),
        Route("/api/runs", runs_json, methods=["GET"]),
        Route("/run", run_page, methods=["GET"]),
        Route("/api/run", run_json, methods=["GET"]),
        Route("/compare", compare_page, methods=["GET"]),
        Route("/api/compare", compare_json, methods=["GET"]),
        Route("/static/plotly.min.js", plotly_script(), methods=["GET"]),
        Mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: http_error, DacapoStoreError: store_error},
    )
    app.state.stores = stores
    return app


def retention_policy(request: Request) -> RetentionPolicy:
    """The retention rules of a run page's query (``keep_last``, ``keep_every``: counts >= 1,
    empty for none; ``keep_best``: present for on).

    Raises:
        HTTPException: 400 for a value that is not a whole number >= 1.
    """
    counts: dict[str, int | None] = {}
    for key in ("keep_last", "keep_every"):
        value = request.query_params.get(key) or None
        try:
            counts[key] = None if value is None else int(value)
            RetentionPolicy(**{key: counts[key]})
        except (TypeError, ValueError):
            raise HTTPException(400, f"{key} must be a whole number >= 1, got {value!r}") from None
    return RetentionPolicy(**counts, keep_best=bool(request.query_params.get("keep_best")))
