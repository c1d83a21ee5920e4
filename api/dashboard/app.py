"""The dashboard under ``/dashboard/``: a WSGI application of its own that the API mounts.

Pages are rendered on the server and refreshed by a small script of our own; nothing is loaded
from another origin (the Content-Security-Policy says so to the browser too). Access rules are
in :mod:`.auth`, SQL in :mod:`.queries`, markup in :mod:`.pages`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import psycopg2

from api.dashboard import pages, queries
from api.dashboard.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Access,
    Gate,
    cookies,
    new_login_nonce,
)
from api.dashboard.html import Markup
from api.pool import ConnectionPool
from api.settings import ApiSettings
from common import db, migrations

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
DATABASE_ERRORS = (psycopg2.Error, db.DatabaseUnavailable, migrations.SchemaOutdated)
PREFIX = "/dashboard"
MAX_FORM_BYTES = 16 * 1024

SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        (
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
]
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
_TASK_PATH = re.compile(r"^/tasks/(\d{1,18})$")


class Response(Exception):
    """A finished answer; raised from anywhere in a handler."""

    def __init__(
        self,
        status: HTTPStatus,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "text/html; charset=utf-8",
    ) -> None:
        super().__init__(status.phrase)
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = headers or []


class Request:
    """What a handler reads of one WSGI request."""

    def __init__(self, environ: dict) -> None:
        self.environ = environ
        self.method = environ.get("REQUEST_METHOD", "GET")
        self.base = environ.get("SCRIPT_NAME", "").rstrip("/") + PREFIX
        self.path = environ.get("PATH_INFO", "")[len(PREFIX) :] or "/"
        self.query = _single_values(environ.get("QUERY_STRING", ""))
        self.secure = environ.get("wsgi.url_scheme") == "https"

    def form(self) -> dict[str, str]:
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            raise Response(
                HTTPStatus.BAD_REQUEST,
                b"the form is missing or too large",
                content_type="text/plain; charset=utf-8",
            )
        raw = self.environ["wsgi.input"].read(length)
        return _single_values(raw.decode("latin-1"))


def _single_values(raw: str) -> dict[str, str]:
    try:
        text = raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        text = ""
    return {name: values[0] for name, values in parse_qs(text, keep_blank_values=True).items()}


def _int(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


class Dashboard:
    def __init__(
        self, settings: ApiSettings, pool: ConnectionPool, ensure_schema: Callable[[], None]
    ) -> None:
        self.gate = Gate(settings)
        self.pool = pool
        self.ensure_schema = ensure_schema

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            self.handle(request)
            raise AssertionError("every handler raises its Response")
        except Response as response:
            answer = response
        except DATABASE_ERRORS as error:
            answer = self._page(
                HTTPStatus.SERVICE_UNAVAILABLE,
                pages.error_page(
                    self._context(request, Access.NONE, None),
                    "Database unavailable",
                    " ".join(str(error).split()),
                ),
            )
        except Exception:
            logger.exception("error answering %s %s", request.method, environ.get("PATH_INFO"))
            answer = self._page(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                pages.error_page(
                    self._context(request, Access.NONE, None),
                    "Internal error",
                    "The dashboard failed; the API's log has the details.",
                ),
            )
        headers = [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            *SECURITY_HEADERS,
            *answer.headers,
        ]
        if not any(name == "Cache-Control" for name, _ in answer.headers):
            headers.append(("Cache-Control", "no-store"))
        start_response(f"{answer.status.value} {answer.status.phrase}", headers)
        return [answer.body]

    # -- routing ------------------------------------------------------------------------------

    def handle(self, request: Request) -> None:
        path = request.path
        if path.startswith("/static/"):
            self.static(request, path[len("/static/") :])
        if path == "/login":
            self.login(request)
        if self.gate.closed:
            raise self._page(
                HTTPStatus.FORBIDDEN,
                pages.error_page(
                    self._context(request, Access.NONE, None),
                    "Dashboard closed",
                    "Set TASK_PROCESSOR_DASHBOARD_TOKEN (or TASK_PROCESSOR_MONITORING_TOKEN for "
                    "read-only access), or bind run-api to a loopback address such as "
                    "127.0.0.1, to open the dashboard.",
                ),
            )
        access, session = self.gate.access(request.environ)
        if access is Access.NONE:
            raise _redirect(request.base + "/login")
        ctx = self._context(request, access, session)
        if request.method == "POST":
            self.post(request, ctx, session)
        if request.method not in ("GET", "HEAD"):
            raise Response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                b"GET or POST",
                [("Allow", "GET, POST")],
                "text/plain; charset=utf-8",
            )
        self.ensure_schema()
        self.get(request, ctx)

    def get(self, request: Request, ctx: pages.Context) -> None:
        path = request.path.rstrip("/") or "/"
        if path == "/":
            page = self.pool.run(lambda cursor: self.overview(ctx, cursor))
        elif path == "/tasks":
            page = self.task_list(request, ctx)
        elif path == "/tasks/lookup":
            task_id = _int(request.query.get("id", "").strip())
            found = task_id is not None and self.pool.run(lambda c: queries.task(c, task_id))
            if found:
                raise _redirect(ctx.url(f"/tasks/{task_id}"))
            page = self.task_list(request, ctx, not_found=task_id or 0)
        elif match := _TASK_PATH.match(path):
            task = self.pool.run(lambda cursor: queries.task(cursor, int(match[1])))
            if task is None:
                raise self._page(
                    HTTPStatus.NOT_FOUND,
                    pages.error_page(ctx, "No such task", f"There is no task {match[1]}."),
                )
            page = pages.task_page(ctx, task)
        elif path == "/recurring":
            page = pages.recurring_page(ctx, self.pool.run(queries.recurring))
        else:
            raise self._page(
                HTTPStatus.NOT_FOUND,
                pages.error_page(ctx, "Not found", f"The dashboard has no page {path}."),
            )
        raise self._page(HTTPStatus.OK, page)

    @staticmethod
    def overview(ctx: pages.Context, cursor: Any) -> Markup:
        identifiers = queries.by_identifier(cursor)
        return pages.overview(
            ctx,
            queries.overview(cursor, identifiers),
            identifiers,
            queries.throughput(cursor),
            queries.processors(cursor),
        )

    def task_list(
        self, request: Request, ctx: pages.Context, not_found: int | None = None
    ) -> Markup:
        state = request.query.get("state") or None
        if state is not None and state not in queries.STATES:
            state = None
        identifier = request.query.get("identifier", "").strip() or None
        before, after = _int(request.query.get("before")), _int(request.query.get("after"))

        def read(cursor: Any) -> tuple[list[queries.Row], list[str]]:
            rows = queries.tasks(cursor, state, identifier, before=before, after=after)
            known = [row["identifier"] for row in queries.by_identifier(cursor)]
            return rows, known

        rows, known = self.pool.run(read)
        size = queries.PAGE_SIZE
        more = len(rows) > size
        if after is not None:
            rows = rows[1:] if more else rows
            newer = rows[0]["id"] if more and rows else None
            older = rows[-1]["id"] if rows else None
        else:
            rows = rows[:size]
            newer = rows[0]["id"] if before is not None and rows else None
            older = rows[-1]["id"] if more else None
        return pages.task_list(ctx, rows, state, identifier, older, newer, known, not_found)

    # -- actions --------------------------------------------------------------------------------

    def post(self, request: Request, ctx: pages.Context, session: str | None) -> None:
        form = request.form()
        if not self.gate.csrf_valid(session, form.get("csrf_token", "")):
            raise self._page(
                HTTPStatus.FORBIDDEN,
                pages.error_page(
                    ctx,
                    "Not allowed",
                    "This form needs a logged-in session and its CSRF token; log in (actions "
                    "need TASK_PROCESSOR_DASHBOARD_TOKEN), reload the page and try again.",
                ),
            )
        if request.path == "/logout":
            raise _redirect(
                ctx.url("/login", done="logged-out"), [_cookie(request, SESSION_COOKIE, "", 0)]
            )
        if not ctx.can_act:
            raise self._page(
                HTTPStatus.FORBIDDEN,
                pages.error_page(
                    ctx,
                    "Read-only",
                    "This session may only read: log in with "
                    "TASK_PROCESSOR_DASHBOARD_TOKEN to act.",
                ),
            )
        done, work, target_of = self._action(ctx, request.path, form)
        changed = self.pool.run(work)
        logger.info("dashboard: %s %s (%s)", done, changed or "nothing", target_of)
        target = form.get("next", "")
        if not target.startswith(request.base + "/") or "//" in target[1:]:
            target = ctx.url("/")
        separator = "&" if "?" in target else "?"
        raise _redirect(f"{target}{separator}done={done}&n={len(changed)}")

    def _action(
        self, ctx: pages.Context, path: str, form: dict[str, str]
    ) -> tuple[str, Callable[[Any], list[int]], object]:
        """(what it does, the work, its target) of an action form; 404 or 400 if invalid."""
        if path == "/actions/requeue-identifier":
            identifier = form.get("identifier") or None
            if identifier is None:
                raise self._page(
                    HTTPStatus.BAD_REQUEST,
                    pages.error_page(ctx, "Bad request", "The form lacks an identifier."),
                )
            return (
                "requeued",
                lambda c: queries.requeue_dead(c, identifier=identifier),
                identifier,
            )
        by_id = {
            "/actions/requeue": ("requeued", queries.requeue_dead),
            "/actions/cancel": ("cancelled", queries.cancel),
            "/actions/run-now": ("ran-now", queries.run_now),
        }
        if path not in by_id:
            raise self._page(
                HTTPStatus.NOT_FOUND,
                pages.error_page(ctx, "Not found", f"There is no action {path}."),
            )
        task_id = _int(form.get("task_id"))
        if task_id is None:
            raise self._page(
                HTTPStatus.BAD_REQUEST,
                pages.error_page(ctx, "Bad request", "The form lacks a valid task_id."),
            )
        done, run = by_id[path]
        return done, lambda c: run(c, task_id), task_id

    # -- login and static files -------------------------------------------------------------

    def login(self, request: Request) -> None:
        ctx = self._context(request, *self.gate.access(request.environ))
        if not self.gate.tokens:
            raise self._page(
                HTTPStatus.NOT_FOUND,
                pages.error_page(
                    ctx,
                    "No login",
                    "No token is configured: set TASK_PROCESSOR_DASHBOARD_TOKEN to allow actions.",
                ),
            )
        if request.method == "POST":
            form = request.form()
            nonce = cookies(request.environ).get(LOGIN_COOKIE, "")
            if not nonce or form.get("login_nonce") != nonce:
                self._login_form(
                    request, ctx, HTTPStatus.FORBIDDEN, "The login form expired; try again."
                )
            level = self.gate.level_of_token(form.get("token", ""))
            if level is Access.NONE:
                logger.warning(
                    "dashboard: a login with a wrong token from %s",
                    request.environ.get("REMOTE_ADDR"),
                )
                self._login_form(request, ctx, HTTPStatus.UNAUTHORIZED, "That token is not right.")
            raise _redirect(
                request.base + "/",
                [
                    _cookie(
                        request, SESSION_COOKIE, self.gate.session_cookie(level), SESSION_SECONDS
                    ),
                    _cookie(request, LOGIN_COOKIE, "", 0),
                ],
            )
        self._login_form(request, ctx, HTTPStatus.OK, None)

    def _login_form(
        self, request: Request, ctx: pages.Context, status: HTTPStatus, error: str | None
    ) -> None:
        nonce = new_login_nonce()
        raise self._page(
            status,
            pages.login_page(ctx, nonce, error),
            [_cookie(request, LOGIN_COOKIE, nonce, 600)],
        )

    def static(self, request: Request, name: str) -> None:
        if name not in STATIC:
            raise Response(HTTPStatus.NOT_FOUND, b"no such file", content_type="text/plain")
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        raise Response(HTTPStatus.OK, data, [("Cache-Control", "max-age=300")], STATIC[name])

    # -- helpers ----------------------------------------------------------------------------------

    def _context(self, request: Request, access: Access, session: str | None) -> pages.Context:
        message = None
        done = request.query.get("done")
        if done in pages.MESSAGES:
            message = pages.MESSAGES[done].format(n=_int(request.query.get("n")) or 0)
        return pages.Context(
            base=request.base,
            access=access,
            csrf=self.gate.csrf_token(session) if session else None,
            logged_in=session is not None,
            login_possible=bool(self.gate.tokens),
            message=message,
        )

    @staticmethod
    def _page(
        status: HTTPStatus, page: Markup, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        return Response(status, page.encode("utf-8"), headers)


def _redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(HTTPStatus.SEE_OTHER, b"", [("Location", location), *(headers or [])])


def _cookie(request: Request, name: str, value: str, max_age: int) -> tuple[str, str]:
    secure = "; Secure" if request.secure else ""
    return (
        "Set-Cookie",
        (
            f"{name}={value}; Path={request.base}/; Max-Age={max_age}; "
            f"HttpOnly; SameSite=Strict{secure}"
        ),
    )
