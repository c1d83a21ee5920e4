"""``run-api --bind HOST:PORT``: serve the API with gunicorn.

gunicorn pre-forks ``--workers`` processes with ``--threads`` threads each (see
:mod:`api.http_server`), so a slow round-trip probe never blocks the other endpoints, a burst of
requests waits in a large listen backlog instead of being refused, and a client that stops
sending is cut off after ``--request-timeout``. The application itself stays a plain WSGI
callable, ``api.app:application``, that any WSGI server can serve.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from api.app import Api
from api.http_server import GunicornServer, ServerSettings
from api.settings import ApiSettings
from common import db, logs, migrations, sentry
from common.config import (
    SHARED_OPTIONS,
    ConfigError,
    build_parser,
    exit_config_error,
    parse_args,
)

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    return build_parser(
        "run-api",
        "Serve the task processor's HTTP API: GET /health?format=json, "
        "GET /processor/monitoring, GET /metrics and the dashboard at /dashboard/.\n\n"
        "Settings read from the environment: ENABLE_TASK_PROCESSOR_HEALTH_CHECK, "
        "TASK_PROCESSOR_HEALTH_CHECK_TIMEOUT, TASK_PROCESSOR_MONITORING_TOKEN, "
        "TASK_PROCESSOR_DASHBOARD_TOKEN, TASK_PROCESSOR_DASHBOARD_ACTION_TOKEN.",
        [
            *SHARED_OPTIONS,
            "bind",
            "api_workers",
            "api_threads",
            "api_request_timeout",
        ],
    )


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


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_args(_parser(), argv)
    logs.configure(arguments.log_level, arguments.log_format, role="api")
    sentry.init(arguments.sentry_dsn, "api")
    try:
        settings = ApiSettings.from_environment(
            arguments.database_url,
            arguments.task_processor_database_url,
            arguments.data_dir,
            bind_host=arguments.bind[0],
        )
    except ConfigError as error:
        exit_config_error("run-api", str(error))
    api = Api(settings)
    _check_schema(api)
    host, port = arguments.bind
    server = ServerSettings(
        host,
        port,
        workers=arguments.api_workers,
        threads=arguments.api_threads,
        request_timeout=arguments.api_request_timeout,
    )

    def ready(address: str) -> None:
        logger.info(
            "listening on %s for %s (%d workers x %d threads, round-trip check %s, "
            "monitoring token %s)",
            address,
            db.describe(settings.database_url),
            server.workers,
            server.threads,
            "on" if settings.round_trip_enabled else "off",
            "required" if settings.monitoring_token else "not required",
        )

    try:
        GunicornServer(api, server, on_ready=ready).run()
    finally:
        api.close()
    return 0
