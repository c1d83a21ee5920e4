"""``run-api --bind HOST:PORT``: serve the API with the standard library's WSGI server.

wsgiref parses HTTP; :class:`socketserver.ThreadingMixIn` gives each request a thread, so a
slow round-trip probe never blocks the monitoring endpoint. For more traffic, serve
``api.app:application`` with gunicorn or any other WSGI server instead.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import socketserver
import sys
import threading
from typing import Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from api.app import Api
from api.settings import ApiSettings
from common import db, logs, migrations, sentry
from common.config import ConfigError, build_parser, exit_config_error, parse_args

logger = logging.getLogger(__name__)



class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung client must not keep the process from stopping


class ThreadingWSGIServer6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class LoggingRequestHandler(WSGIRequestHandler):
    """Access lines go to the log, not raw to stderr; requests the server refuses before the
    application sees them (a malformed request line, huge headers) are answered in JSON too."""

    error_content_type = "application/json"
    error_message_format = '{"error": "%(code)d %(message)s"}\n'

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        logging.getLogger("api.access").info("%s %s", self.address_string(), format % args)


def _parser() -> argparse.ArgumentParser:
    parser = build_parser(
        "run-api",
        "Serve the task processor's HTTP API: GET /health?format=json and "
        "GET /processor/monitoring.\n\nSettings read from the environment: "
        "ENABLE_TASK_PROCESSOR_HEALTH_CHECK, TASK_PROCESSOR_HEALTH_CHECK_TIMEOUT, "
        "TASK_PROCESSOR_MONITORING_TOKEN.",
        ["database_url", "task_processor_database_url", "data_dir", "log_level", "log_format",
         "sentry_dsn", "bind"])
    return parser


def _check_schema(api: Api) -> None:
    """Refuse to serve an outdated schema or a database that refuses this connection (a
    refused password, a missing role or database); serve (and report 500) while the database
    is down."""
    try:
        api.check_schema()
    except (migrations.SchemaOutdated, db.DatabaseRefused) as error:
        exit_config_error("run-api", str(error))
    except db.DatabaseUnavailable as error:
        logger.warning("serving, but the database is unavailable: %s", error)


def _stop_on_signals(server: WSGIServer) -> None:
    def stop(signum: int, _frame) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        # shutdown() waits for serve_forever() to return, so it cannot run in this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_args(_parser(), argv)
    logs.configure(arguments.log_level, arguments.log_format, role="api")
    sentry.init(arguments.sentry_dsn, "api")
    try:
        settings = ApiSettings.from_environment(arguments.database_url,
                                                arguments.task_processor_database_url,
                                                arguments.data_dir)
    except ConfigError as error:
        exit_config_error("run-api", str(error))
    api = Api(settings)
    _check_schema(api)
    host, port = arguments.bind
    server_class = ThreadingWSGIServer6 if ":" in host else ThreadingWSGIServer
    try:
        server = make_server(host, port, api, server_class=server_class,
                             handler_class=LoggingRequestHandler)
    except OSError as error:
        print(f"run-api: cannot listen on {host}:{port}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    bound_host, bound_port = server.server_address[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    logger.info("listening on http://%s:%d for %s (round-trip check %s, monitoring token %s)",
                shown_host, bound_port, db.describe(settings.database_url),
                "on" if settings.round_trip_enabled else "off",
                "required" if settings.monitoring_token else "not required")
    _stop_on_signals(server)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        api.close()
    return 0
