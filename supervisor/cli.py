"""``run-task-processor``: parse the configuration, import the task modules, run the
supervisor. Exit status: 0 after a requested stop, 78 for a configuration error (including a
task module that cannot be imported), 1 for a fatal error such as a worker crash loop."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from builtin_tasks import BUILTIN_TASK_MODULES
from common import db, logs, move_queue, registry, sentry
from common.config import (
    POLL_ONLY,
    SHARED_OPTIONS,
    ConfigError,
    build_parser,
    exit_config_error,
    parse_args,
    split_modules,
)
from common.migrations import SchemaOutdated
from common.settings import ProcessorSettings, enter_processor
from supervisor.arbiter import MAX_WORKERS, Supervisor
from supervisor.metrics import MetricsServerError, ProcessorMetrics
from supervisor.recurring import RecurringDuty
from supervisor.statistics import StatisticsWatch
from supervisor.unrunnable import UnrunnableWatch

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
    "tasks",
    "numthreads",
    "sleepintervalms",
    "listen_database_url",
    "graceperiodms",
    "queuepopsize",
    "drain_timeout",
    "max_tasks_per_worker",
    "max_worker_memory_mb",
    "lease_seconds",
    "retention_days",
    "dead_retention_days",
    "metrics_bind",
    "migrate",
    *SHARED_OPTIONS,
)


def processor_settings(options: argparse.Namespace, processor_id: str) -> ProcessorSettings:
    """The processor's settings, from parsed options; ConfigError if no database is set."""
    return ProcessorSettings(
        database_url=db.queue_database_url(
            options.task_processor_database_url, options.database_url, options.data_dir
        ),
        processor_id=processor_id,
        sleep_interval=options.sleepintervalms / 1000,
        grace_period=options.graceperiodms / 1000,
        queue_pop_size=options.queuepopsize,
        lease_seconds=options.lease_seconds,
        max_tasks=options.max_tasks_per_worker,
        max_memory_mb=options.max_worker_memory_mb,
        retention_days=options.retention_days,
        dead_retention_days=options.dead_retention_days,
        log_level=options.log_level,
        log_format=options.log_format,
        sentry_dsn=options.sentry_dsn,
        listen_database_url=None
        if options.listen_database_url == POLL_ONLY
        else options.listen_database_url,
        poll_only=options.listen_database_url == POLL_ONLY,
    )


def processor_metrics(bind: tuple[str, int] | None) -> ProcessorMetrics:
    """The metrics of ``--metrics-bind``, or none; exit 78 when prometheus_client is missing."""
    if bind is None:
        return ProcessorMetrics.disabled()
    try:
        from supervisor import metrics_server  # imports prometheus_client: only when asked
    except ImportError as error:
        exit_config_error(
            PROG,
            f"--metrics-bind needs prometheus_client ({error}); install "
            f"the metrics extra: pip install 'task-processor[metrics]'",
        )
    return ProcessorMetrics(bind, metrics_server.serve, MAX_WORKERS)


def import_task_modules(modules: Sequence[str]) -> None:
    """Import every task module before the first fork, so that workers inherit them and a
    broken module stops the start (exit 78) instead of feeding a respawn loop."""
    try:
        registry.load_modules([*BUILTIN_TASK_MODULES, *modules])
    except registry.TaskModuleError as error:
        if error.__cause__ is not None:  # the module's own code raised: show where
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
    processor_id = f"{os.uname().nodename}-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        settings = processor_settings(options, processor_id)
    except ConfigError as error:
        exit_config_error(PROG, str(error))
    if not options.tasks:
        logger.warning(
            "no task modules given (--tasks or TASK_PROCESSOR_TASKS): this "
            "processor runs only the built-in tasks"
        )
    metrics = processor_metrics(options.metrics_bind)
    import_task_modules(options.tasks or [])
    sentry.init(options.sentry_dsn, "supervisor")
    enter_processor(settings)

    def reload() -> tuple[ProcessorSettings, int] | None:
        """Re-read flags, environment and config file; None if the result is invalid."""
        try:
            new = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
            if new.tasks is not None:
                new.tasks = split_modules(new.tasks)
            if sorted(new.tasks or []) != sorted(options.tasks or []):
                logger.warning(
                    "SIGHUP cannot change --tasks: restart the processor to load other task modules"
                )
            return processor_settings(new, processor_id), new.numthreads
        except (ConfigError, SystemExit) as error:
            logger.error("SIGHUP: %s", error)
            return None

    move_queue.warn_if_left_behind(options.database_url, settings.database_url)
    supervisor = Supervisor(
        settings=settings,
        num_workers=options.numthreads,
        drain_timeout=options.drain_timeout,
        reload_settings=reload,
        duties=[RecurringDuty(processor_id), UnrunnableWatch(), StatisticsWatch()],
        migrate=options.migrate,
        metrics=metrics,
    )
    try:
        return supervisor.run()
    except (
        SchemaOutdated,
        db.DatabaseRefused,
        MetricsServerError,
    ) as error:  # errors no restart can fix
        exit_config_error(PROG, str(error))


if __name__ == "__main__":
    sys.exit(main())
