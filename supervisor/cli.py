"""``run-task-processor``: parse the configuration, import the task modules, run the
supervisor. Exit status: 0 after a requested stop, 78 for a configuration error (including a
task module that cannot be imported), 1 for a fatal error such as a worker crash loop."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import secrets
import socket
import sys
import traceback
from typing import Sequence

from common import db, logs, registry, sentry
from common.builtin import BUILTIN_TASK_MODULES, retention
from common.config import ConfigError, build_parser, exit_config_error, parse_args, split_modules
from common.migrations import SchemaOutdated
from common.recurring import RecurringDuty
from common.tasks import enter_processor_mode
from supervisor.arbiter import Supervisor
from worker.process import WorkerSettings

logger = logging.getLogger(__name__)

PROG = "run-task-processor"
DESCRIPTION = """\
Run the queued tasks. A supervisor process forks --numthreads worker processes (the option
keeps the reference's name; they are processes), watches their heartbeats, and kills and
replaces any worker that is stuck or runs a task past its timeout.

Signals: TERM/INT drain (running tasks finish, up to --drain-timeout), a second TERM/INT or
QUIT stops at once, HUP reloads the configuration, TTIN/TTOU add or remove a worker.
Exit status: 0 stopped on request, 78 configuration error, 1 fatal error (crash loop)."""

OPTIONS = (
    "tasks", "numthreads", "sleepintervalms", "graceperiodms", "queuepopsize", "drain_timeout",
    "max_tasks_per_worker", "max_worker_memory_mb", "lease_seconds", "retention_days",
    "dead_retention_days", "migrate", "database_url", "task_processor_database_url",
    "log_level", "log_format", "sentry_dsn",
)

RETRY_BACKOFF_SECONDS = 1.0  # a failed task's first retry comes 0.5-1 s later, then doubles
MAX_RETRY_BACKOFF_SECONDS = 600.0


def worker_settings(options: argparse.Namespace, processor_id: str) -> WorkerSettings:
    """Settings for the workers, from parsed options; ConfigError if no database is set."""
    return WorkerSettings(
        database_url=db.queue_database_url(options.task_processor_database_url,
                                           options.database_url),
        processor_id=processor_id,
        sleep_interval=options.sleepintervalms / 1000,
        grace_period=options.graceperiodms / 1000,
        queue_pop_size=options.queuepopsize,
        lease_seconds=options.lease_seconds,
        max_tasks=options.max_tasks_per_worker,
        max_memory_mb=options.max_worker_memory_mb,
        backoff_seconds=RETRY_BACKOFF_SECONDS,
        max_backoff_seconds=MAX_RETRY_BACKOFF_SECONDS,
        log_level=options.log_level,
        log_format=options.log_format,
        sentry_dsn=options.sentry_dsn,
    )


def import_task_modules(modules: Sequence[str]) -> None:
    """Import every task module before the first fork, so that workers inherit them and a
    broken module stops the start (exit 78) instead of feeding a respawn loop."""
    try:
        registry.load_modules([*BUILTIN_TASK_MODULES, *modules])
    except registry.TaskModuleError as error:
        traceback.print_exception(error.__cause__, file=sys.stderr)
        exit_config_error(PROG, str(error))


def main(argv: Sequence[str] | None = None) -> int:
    # No collections in the supervisor until its workers are forked (they enable theirs): the
    # holes a collection leaves in the heap would be filled by each worker, copying the pages
    # they are on. The supervisor freezes the heap before each fork and then collects again.
    gc.disable()
    parser = build_parser(PROG, DESCRIPTION, OPTIONS)
    options = parse_args(parser, argv)
    logs.configure(options.log_level, options.log_format, role="supervisor")
    processor_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        settings = worker_settings(options, processor_id)
    except ConfigError as error:
        exit_config_error(PROG, str(error))
    if not options.tasks:
        logger.warning("no task modules given (--tasks or TASK_PROCESSOR_TASKS): this "
                       "processor runs only the built-in tasks")
    import_task_modules(options.tasks or [])
    retention.configure(options.retention_days, options.dead_retention_days)
    sentry.init(options.sentry_dsn, "supervisor")
    enter_processor_mode()

    def reload() -> tuple[WorkerSettings, int] | None:
        """Re-read flags, environment and config file; None if the result is invalid."""
        try:
            new = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
            if new.tasks is not None:
                new.tasks = split_modules(new.tasks)
            if sorted(new.tasks or []) != sorted(options.tasks or []):
                logger.warning("SIGHUP cannot change --tasks: restart the processor to load "
                               "other task modules")
            settings = worker_settings(new, processor_id)
            retention.configure(new.retention_days, new.dead_retention_days)
            return settings, new.numthreads
        except (ConfigError, SystemExit) as error:
            logger.error("SIGHUP: %s", error)
            return None

    supervisor = Supervisor(settings=settings, num_workers=options.numthreads,
                            drain_timeout=options.drain_timeout, reload_settings=reload,
                            duties=[RecurringDuty(processor_id)], migrate=options.migrate)
    try:
        return supervisor.run()
    except SchemaOutdated as error:  # --migrate false on a database that needs migrating
        exit_config_error(PROG, str(error))


if __name__ == "__main__":
    sys.exit(main())
