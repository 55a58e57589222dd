"""The console's HTTP side: routes, the token and CSRF checks, errors as statuses.

Every page has a JSON twin under ``/api`` built by the same function
(``views.py``); the pages are Jinja2 templates rendered on the server, with a
little JavaScript (``static/console.js``) for live refresh and table sorting.
Nothing is loaded from elsewhere: the Content-Security-Policy says so.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from overlay import RpcError

from . import actions, views
from .auth import COOKIE, Keys
from .svg import line_plot

if TYPE_CHECKING:
    from ..daemon import Node

logger = logging.getLogger("gridnode.console")
HERE = Path(__file__).parent
MAX_BODY = 16 * 1024
GRID_FRESH_S = 4.0  # the grid page asks every node at most this often
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
PAGES = (("/", "This node"), ("/grid", "Grid"), ("/jobs", "Jobs"), ("/datasets", "Datasets"),
         ("/health", "Health"))


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = lambda t: "-" if not t else time.strftime(
        "%Y-%m-%d %H:%M:%S", time.localtime(t))
    env.filters["ago"] = _ago
    env.filters["bytes"] = _bytes
    env.filters["short"] = lambda h: (h or "-")[:12]
    env.filters["urlpart"] = lambda s: quote(str(s), safe=":")
    return env


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    s = max(0.0, time.time() - t)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Console:
    def __init__(self, node: Node, keys: Keys, *, allow_remote: bool) -> None:
        self.node = node
        self.keys = keys
        self.allow_remote = allow_remote
        self.url: str | None = None
        self._grid_view: tuple[float, dict[str, Any]] | None = None
        self.env = _env()
        self.counters = {"requests": 0, "refused_token": 0, "refused_csrf": 0,
                         "refused_remote": 0, "bad_requests": 0, "actions": 0}

    # -- checks -----------------------------------------------------------

    def _check_host(self, request: Request) -> str | None:
        """The client's address; HttpError if it is another host and that is not allowed."""
        host = request.client.host if request.client else None
        if not self.allow_remote and not _loopback(host):
            self.counters["refused_remote"] += 1
            raise HttpError(403, "the console answers only on this machine "
                                 "(console.allow_remote is off)")
        return host

    def _check(self, request: Request) -> str:
        """Who is asking, or HttpError: another host when not allowed, no token."""
        host = self._check_host(request)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if not (self.keys.is_token(bearer) or self.keys.is_session(request.cookies.get(COOKIE))):
            self.counters["refused_token"] += 1
            raise HttpError(401, "log in first: run `gridnode console` on the node and open "
                                 "the link it prints")
        return f"console@{host}"

    def _check_csrf(self, request: Request, form: dict[str, Any]) -> None:
        if not self.keys.is_csrf(request.headers.get("x-csrf-token") or form.get("csrf")):
            self.counters["refused_csrf"] += 1
            raise HttpError(403, "missing or wrong CSRF token; reload the page and try again")

    # -- plumbing ---------------------------------------------------------

    def routes(self) -> list[Any]:
        page, api, act = self._page, self._api, self._action
        return [
            Route("/login", self.login),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", page("node.html", lambda r: views.node_view(
                self.node, r.query_params.get("level", "info")))),
            Route("/grid", page("grid.html", self._grid)),
            Route("/jobs", page("jobs.html", self._jobs)),
            Route("/jobs/{job}", page("job.html", lambda r: views.job_view(
                self.node, r.path_params["job"]))),
            Route("/datasets", page("datasets.html", self._datasets)),
            Route("/datasets/{name:path}", page("dataset.html", self._dataset)),
            Route("/health", page("health.html", self._health)),
            Route("/api/node", api(lambda r: views.node_view(
                self.node, r.query_params.get("level", "info")))),
            Route("/api/grid", api(self._grid)),
            Route("/api/jobs", api(self._jobs)),
            Route("/api/jobs/{job}", api(lambda r: views.job_view(
                self.node, r.path_params["job"]))),
            Route("/api/datasets", api(self._datasets)),
            Route("/api/datasets/{name:path}", api(lambda r: views.dataset_view(
                self.node, r.path_params["name"]))),
            Route("/api/health", api(lambda r: views.health_view(self.node, self._hours(r)))),
            Route("/api/node/drain", act(lambda who, r, f: actions.drain(
                self.node, who, f.get("reason")), "/"), methods=["POST"]),
            Route("/api/node/resume", act(lambda who, r, f: actions.resume(
                self.node, who, f.get("reason")), "/"), methods=["POST"]),
            Route("/api/node/slots", act(lambda who, r, f: actions.set_slots(
                self.node, who, f.get("cores"), f.get("reason")), "/"), methods=["POST"]),
            Route("/api/jobs/{job}/cancel", act(lambda who, r, f: actions.cancel_job(
                self.node, who, r.path_params["job"], f.get("reason")),
                "/jobs/{job}"), methods=["POST"]),
            Route("/api/repair/{name:path}", act(lambda who, r, f: actions.repair(
                self.node, who, r.path_params["name"], f.get("reason")),
                "/datasets/{name}"), methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    def app(self) -> Starlette:
        return Starlette(routes=self.routes())

    async def _guarded(self, request: Request, html: bool,
                       fn: Callable[[], Awaitable[Response]]) -> Response:
        self.counters["requests"] += 1
        try:
            return await fn()
        except HttpError as exc:
            status, message = exc.status, str(exc)
        except views.BadParameter as exc:
            status, message = 400, str(exc)
        except views.NotFound as exc:
            status, message = 404, str(exc)
        except actions.Refused as exc:
            status, message = 403, str(exc)
        except RpcError as exc:
            status, message = (404 if exc.code == "not_found" else 400 if exc.code ==
                               "bad_request" else 503), str(exc)
        if status == 400:
            self.counters["bad_requests"] += 1
        if html:
            body = self.env.get_template("error.html").render(
                status=status, message=message, pages=PAGES, here=request.url.path,
                csrf="", logged_in=status != 401)
            return self._secure(HTMLResponse(body, status_code=status))
        return self._secure(JSONResponse({"error": message}, status_code=status))

    def _secure(self, response: Response) -> Response:
        response.headers["content-security-policy"] = CSP
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "no-referrer"
        response.headers["cache-control"] = "no-store"
        return response

    def _page(self, template: str, data: Callable[[Request], Awaitable[dict[str, Any]]]
              ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            async def go() -> Response:
                self._check(request)
                d = await data(request)
                body = self.env.get_template(template).render(
                    d=d, pages=PAGES, here=request.url.path, csrf=self.keys.csrf,
                    logged_in=True, message=request.query_params.get("done", ""),
                    node=self.node.cert.name, plot=line_plot)
                return self._secure(HTMLResponse(body))
            return await self._guarded(request, True, go)
        return endpoint

    def _api(self, data: Callable[[Request], Awaitable[dict[str, Any]]]
             ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            async def go() -> Response:
                self._check(request)
                return self._secure(JSONResponse(_plain(await data(request))))
            return await self._guarded(request, False, go)
        return endpoint

    def _action(self, fn: Callable[[str, Request, dict[str, Any]], Awaitable[dict[str, Any]]],
                back: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            is_form = request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data"))

            async def go() -> Response:
                who = self._check(request)
                form = await self._body(request, is_form)
                self._check_csrf(request, form)
                result = await fn(who, request, form)
                self.counters["actions"] += 1
                if is_form:
                    target = back.format(**{k: quote(str(v), safe=":")
                                            for k, v in request.path_params.items()})
                    return RedirectResponse(f"{target}?done={quote(result['done'][:300])}", 303)
                return self._secure(JSONResponse(_plain(result)))
            return await self._guarded(request, is_form, go)
        return endpoint

    async def _body(self, request: Request, is_form: bool) -> dict[str, Any]:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise HttpError(413, f"the request body is larger than {MAX_BODY} bytes")
        if is_form:
            try:
                pairs = parse_qs(raw.decode(), strict_parsing=bool(raw))
            except (UnicodeDecodeError, ValueError):
                raise HttpError(400, "the form is not valid") from None
            return {k: v[-1] for k, v in pairs.items()}
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "the body is not JSON (or send a form)") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        return body

    # -- pages that take parameters -----------------------------------------

    async def _grid(self, r: Request) -> dict[str, Any]:
        """The grid view, asked of every node at most once per GRID_FRESH_S: pages
        refreshing live in several browsers do not each ask the whole grid."""
        now = time.monotonic()
        if self._grid_view is None or now - self._grid_view[0] >= GRID_FRESH_S:
            self._grid_view = (now, await views.grid_view(self.node))
        return self._grid_view[1]

    async def _jobs(self, r: Request) -> dict[str, Any]:
        q = r.query_params
        return await views.jobs_view(self.node, q.get("state") or None, q.get("user") or None)

    async def _datasets(self, r: Request) -> dict[str, Any]:
        return await views.datasets_view(self.node, r.query_params.get("scope") or None)

    async def _dataset(self, r: Request) -> dict[str, Any]:
        return await views.dataset_view(self.node, r.path_params["name"])

    def _hours(self, r: Request) -> float:
        try:
            hours = float(r.query_params.get("hours", "6"))
        except ValueError:
            raise views.BadParameter("hours must be a number") from None
        if not math.isfinite(hours):
            raise views.BadParameter("hours must be a number")
        return hours

    async def _health(self, r: Request) -> dict[str, Any]:
        return await views.health_view(self.node, self._hours(r))

    # -- login --------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        async def go() -> Response:
            host = self._check_host(request)
            if not self.keys.is_token(request.query_params.get("token")):
                self.counters["refused_token"] += 1
                raise HttpError(401, "wrong or missing token: use the link that "
                                     "`gridnode console` prints")
            logger.info("console login from %s", host)
            response = RedirectResponse("/", 303)
            response.set_cookie(COOKIE, self.keys.session, httponly=True, samesite="strict",
                                path="/")
            return self._secure(response)
        return await self._guarded(request, True, go)

    async def logout(self, request: Request) -> Response:
        async def go() -> Response:
            self._check(request)
            self._check_csrf(request, await self._body(request, True))
            response = RedirectResponse("/login", 303)
            response.delete_cookie(COOKIE, path="/")
            return self._secure(response)
        return await self._guarded(request, True, go)


def _plain(obj: Any) -> Any:
    """JSON can carry it: bytes as hex, tuples as lists, non-finite floats as null."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
