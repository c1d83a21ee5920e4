"""The HTTP API as a plain WSGI application: ``/health``, ``/processor/monitoring``,
``/metrics`` (Prometheus) and the dashboard under ``/dashboard/``.

Serve it with ``run-api``, any WSGI server (``gunicorn api.app:application``), or mount it in a
Django or Flask application with :func:`mount`. Every response but the metrics and the
dashboard's pages is JSON, errors included; a failure never shows a traceback to the client (it
goes to the log).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import psycopg2

from api import metrics, metrics_queries, queries
from api.dashboard.app import Dashboard
from api.pool import ConnectionPool
from api.probe import WORKING, RoundTripProbe
from api.settings import ApiSettings
from common import db, migrations, redaction
from common.config import ConfigError
from common.logs import one_line

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict, StartResponse], Iterable[bytes]]

ROUTES = ("/health", "/processor/monitoring", "/metrics")
DASHBOARD = "/dashboard"

# Errors that mean "the database cannot answer this" rather than a bug in this code.
DATABASE_ERRORS = (psycopg2.Error, db.DatabaseUnavailable, migrations.SchemaOutdated)


class HttpError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(
        self, status: HTTPStatus, message: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


@dataclass(frozen=True)
class Raw:
    """A response body that is not JSON."""

    content_type: str
    data: bytes


def _query(environ: dict) -> dict[str, str]:
    """The query string as single values; a repeated or undecodable parameter is a 400."""
    raw = environ.get("QUERY_STRING", "")
    try:
        # PEP 3333 hands over the raw bytes as latin-1; percent-escapes must be UTF-8.
        parsed = parse_qs(
            raw.encode("latin-1").decode("utf-8"), keep_blank_values=True, errors="strict"
        )
    except UnicodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the query string is not valid UTF-8") from None
    repeated = sorted(name for name, values in parsed.items() if len(values) > 1)
    if repeated:
        raise HttpError(
            HTTPStatus.BAD_REQUEST, f"query parameter {repeated[0]!r} is given more than once"
        )
    return {name: values[0] for name, values in parsed.items()}


def _require_json_format(query: dict[str, str]) -> None:
    fmt = query.get("format", "json")
    if fmt != "json":
        raise HttpError(
            HTTPStatus.BAD_REQUEST,
            f"unsupported format {fmt!r}: this endpoint answers only format=json",
        )


class Api:
    """The WSGI callable. One instance holds one connection pool and one probe coordinator."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.pool = ConnectionPool(settings.database_url)
        self.probe = RoundTripProbe(self.pool, settings.round_trip_timeout_seconds)
        self._schema_checked = False
        self._routes = {
            "/health": self.health,
            "/processor/monitoring": self.monitoring,
            "/metrics": self.metrics,
        }
        self.dashboard = Dashboard(settings, self.pool, self._ensure_schema)

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if is_dashboard_path(environ.get("PATH_INFO", "")):
            return self.dashboard(environ, start_response)
        try:
            status, body, headers = self._dispatch(environ)
        except HttpError as error:
            status, body, headers = error.status, {"error": str(error)}, error.headers
        except Exception:
            logger.exception(
                "error answering %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
            )
            status, body, headers = (
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": "internal error; the API's log has the details"},
                [],
            )
        return _respond(start_response, status, body, headers)

    def _dispatch(self, environ: dict) -> tuple[HTTPStatus, Any, list[tuple[str, str]]]:
        path = environ.get("PATH_INFO", "") or "/"
        if path != "/":
            path = path.rstrip("/")
        handler = self._routes.get(path)
        if handler is None:
            raise HttpError(
                HTTPStatus.NOT_FOUND,
                f"no such endpoint {path!r}; this API serves {', '.join(ROUTES)}",
            )
        if environ.get("REQUEST_METHOD") != "GET":
            raise HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{path} answers only GET, not {environ.get('REQUEST_METHOD')}",
                [("Allow", "GET")],
            )
        status, body = handler(environ, _query(environ))
        return status, body, []

    def health(self, environ: dict, query: dict[str, str]) -> tuple[HTTPStatus, dict[str, str]]:
        """The database check decides the status; the round-trip check is only reported."""
        _require_json_format(query)
        checks = {"database": self._database_check()}
        if self.settings.round_trip_enabled:
            checks["task_processor"] = (
                self.probe.check()
                if checks["database"] == WORKING
                else "not run: the database check failed"
            )
        critical_ok = checks["database"] == WORKING
        return (HTTPStatus.OK if critical_ok else HTTPStatus.INTERNAL_SERVER_ERROR), checks

    def monitoring(self, environ: dict, query: dict[str, str]) -> tuple[HTTPStatus, dict]:
        """Task statistics, behind a bearer token when one is configured."""
        self._authorize(environ)
        _require_json_format(query)
        try:
            self._ensure_schema()
            return HTTPStatus.OK, self.pool.run(queries.monitoring)
        except DATABASE_ERRORS as error:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, one_line(error)) from None

    def metrics(self, environ: dict, query: dict[str, str]) -> tuple[HTTPStatus, Raw]:
        """The cluster's gauges for Prometheus, behind the monitoring token like the above."""
        self._authorize(environ)
        if not metrics.available():
            raise HttpError(HTTPStatus.NOT_IMPLEMENTED, metrics.INSTALL_HINT)
        try:
            self._ensure_schema()
            content_type, data = metrics.render(lambda: self.pool.run(metrics_queries.snapshot))
        except DATABASE_ERRORS as error:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, one_line(error)) from None
        return HTTPStatus.OK, Raw(content_type, data)

    def _authorize(self, environ: dict) -> None:
        expected = self.settings.monitoring_token
        if expected is None:
            return
        given = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            # WSGI hands header values over as latin-1 text: back to the bytes sent.
            token.strip().encode("latin-1", "replace"),
            expected.encode("utf-8"),
        ):
            raise HttpError(
                HTTPStatus.UNAUTHORIZED,
                "this endpoint requires the header Authorization: Bearer <token> "
                "with the value of TASK_PROCESSOR_MONITORING_TOKEN",
                [("WWW-Authenticate", 'Bearer realm="task-processor"')],
            )

    def _database_check(self) -> str:
        try:
            self.pool.run(queries.ping)
            self._ensure_schema()
        except DATABASE_ERRORS as error:
            return one_line(error)
        return WORKING

    def _ensure_schema(self) -> None:
        """Check the schema once, at the first request that reaches the database."""
        if not self._schema_checked:
            self.check_schema()

    def check_schema(self) -> None:
        """Raise :class:`migrations.SchemaOutdated` (saying what to run) if it is not current."""
        self.pool.run(lambda cursor: migrations.check_current(cursor.connection))
        self._schema_checked = True

    def close(self) -> None:
        self.pool.close()


def is_dashboard_path(path: str) -> bool:
    return path == DASHBOARD or path.startswith(DASHBOARD + "/")


def _respond(
    start_response: StartResponse, status: HTTPStatus, body: Any, headers: list[tuple[str, str]]
) -> list[bytes]:
    if isinstance(body, Raw):
        content_type, payload = body.content_type, body.data
    else:
        content_type = "application/json"
        payload = json.dumps(redaction.scrub_data(body), sort_keys=True).encode("utf-8") + b"\n"
    start_response(
        f"{status.value} {status.phrase}",
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
            *headers,
        ],
    )
    return [payload]


_default: Api | None = None
_default_lock = threading.Lock()


def application(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """The API configured from the environment, built on its first request.

    Building it lazily lets a host application import this module before its environment is
    complete; a configuration error then answers 500 with the reason, and is logged.
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                try:
                    _default = Api(ApiSettings.from_environment())
                except ConfigError as error:
                    logger.error("the task processor API is not configured: %s", error)
                    return _respond(
                        start_response,
                        HTTPStatus.INTERNAL_SERVER_ERROR,
                        {"error": f"configuration error: {error}"},
                        [],
                    )
    return _default(environ, start_response)


def mount(other: WsgiApp, prefix: str = "", api: WsgiApp = application) -> WsgiApp:
    """A WSGI app that sends ``prefix + /health``, ``/processor/monitoring``, ``/metrics`` and
    ``/dashboard/...`` to ``api`` and every other path to ``other`` (a Django or Flask
    application)."""
    prefix = prefix.rstrip("/")

    def dispatch(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        own = path.startswith(prefix) and (
            path[len(prefix) :].rstrip("/") in ROUTES or is_dashboard_path(path[len(prefix) :])
        )
        if own:
            environ = {
                **environ,
                "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + prefix,
                "PATH_INFO": path[len(prefix) :],
            }
            return api(environ, start_response)
        return other(environ, start_response)

    return dispatch
