"""``check-health`` (alias ``checktaskprocessorthreadhealth``): is the processor alive?

Reads the heartbeat tables and exits 0 when the selected processor's supervisor and every one
of its worker slots are healthy, 1 otherwise, with one line that says which, since when and
why. Only 0 and 1 are ever returned, configuration errors included: Docker's HEALTHCHECK and
most orchestrators read any other status as unhealthy too, but some treat it as reserved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from common import db, redaction
from common.config import ConfigError, bounded_int, build_parser
from common.logs import one_line
from health import queries
from health.report import Report, judge, nothing_to_check

HEALTHY, UNHEALTHY = 0, 1

_DESCRIPTION = """\
Check the task processor's heartbeats and exit 0 (healthy) or 1 (unhealthy).

Healthy means: the supervisor wrote its heartbeat within its grace period (--graceperiodms of
run-task-processor), and every worker slot is idle with a heartbeat within the grace period, or
busy before its task's deadline plus the grace period. Otherwise one line says which worker,
since when and why. All times are compared on the database clock.

By default the processor checked is the newest one on this host (os.uname().nodename) that
has not stopped. Exit status: 0 healthy, 1 anything else, including an unreachable database
and configuration errors (Docker HEALTHCHECK semantics).
"""


def _parser() -> argparse.ArgumentParser:
    parser = build_parser(
        "check-health", _DESCRIPTION, ["database_url", "task_processor_database_url", "data_dir"]
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--processor-id",
        metavar="ID",
        help="check this processor (its id in task_processor.processors)",
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="check every processor in the database that has not stopped",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the full state (processors, workers, ages, current tasks) "
        "as JSON instead of one line",
    )
    parser.add_argument(
        "--timeout",
        type=bounded_int(1, 60),
        default=5,
        metavar="SECONDS",
        help="connect and statement timeout; an unanswering database is "
        "unhealthy after this long (default 5)",
    )
    return parser


def _check(cursor, arguments: argparse.Namespace) -> Report:
    if arguments.all:
        scope = "all processors"
        processors = queries.processors_not_stopped(cursor)
        if not processors:
            return nothing_to_check(
                scope,
                "no task processor is running (none in the "
                "database has a state other than stopped)",
            )
    elif arguments.processor_id:
        scope = f"processor {arguments.processor_id}"
        found = queries.processor_by_id(cursor, arguments.processor_id)
        if found is None:
            return nothing_to_check(
                scope,
                f"no processor with id {arguments.processor_id!r} in task_processor.processors",
            )
        processors = [found]
    else:
        host = os.uname().nodename  # as the supervisor names its host
        scope = f"host {host}"
        found = queries.processor_of_host(cursor, host)
        if found is None:
            return nothing_to_check(scope, f"no task processor has ever started on host {host}")
        processors = [found]
    running = [processor.id for processor in processors if processor.state != "stopped"]
    return judge(scope, processors, queries.workers_of(cursor, running))


def _print(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(redaction.scrub_data(report.as_json()), indent=2, sort_keys=True))
    else:
        print(redaction.scrub(report.summary()))


def run(arguments: argparse.Namespace) -> Report:
    """Connect with short timeouts and judge; database errors become an unhealthy report."""
    try:
        url = db.queue_database_url(
            arguments.task_processor_database_url, arguments.database_url, arguments.data_dir
        )
    except ConfigError as error:
        return nothing_to_check("configuration", f"configuration error: {error}")
    try:
        connection = db.connect(
            url,
            "check-health",
            connect_timeout=arguments.timeout,
            statement_timeout_ms=arguments.timeout * 1000,
        )
    except db.DatabaseUnavailable as error:
        return nothing_to_check("database", str(error))
    try:
        # A server that stops answering after the connection is made would outwait the
        # statement timeout it enforces itself: the deadline cuts the connection instead.
        with db.Deadline(connection, arguments.timeout + 1), connection.cursor() as cursor:
            return _check(cursor, arguments)
    except Exception as error:  # any database error means "cannot tell": unhealthy
        reason = one_line(error)
        return nothing_to_check(
            "database", f"cannot read the heartbeat tables of {db.describe(url)}: {reason}"
        )
    finally:
        connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        arguments = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as error:
        print(redaction.scrub(f"check-health: configuration error: {error}"), file=sys.stderr)
        return UNHEALTHY
    except SystemExit as exit_:  # --help, or an unreadable --config file
        return HEALTHY if exit_.code in (0, None) else UNHEALTHY
    redaction.hide_command_line()
    report = run(arguments)
    _print(report, arguments.json)
    return HEALTHY if report.healthy else UNHEALTHY
