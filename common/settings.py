"""The processor's settings, and whether this process is part of a processor.

``run-task-processor`` builds one :class:`ProcessorSettings` from its options; the supervisor
and every worker it forks run with it (a reload replaces the workers, which then run with the
new one). A process of the processor calls :func:`enter_processor` at start: from then on
``.delay()`` always enqueues, the queue is the processor's own database, and the built-in
tasks read their options from these settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from common.config import OPTIONS


def _default(option: str) -> Any:
    return OPTIONS[option].default


class ProcessorSettings(NamedTuple):
    """The options of ``run-task-processor`` that its processes act on; the defaults are the
    options' own."""

    database_url: str
    processor_id: str
    sleep_interval: float = _default("sleepintervalms") / 1000  # seconds
    grace_period: float = _default("graceperiodms") / 1000  # seconds
    queue_pop_size: int = _default("queuepopsize")
    lease_seconds: int = _default("lease_seconds")
    max_tasks: int = _default("max_tasks_per_worker")  # per worker; 0: no limit
    max_memory_mb: int = _default("max_worker_memory_mb")  # a worker's RSS; 0: no limit
    retention_days: int = _default("retention_days")
    dead_retention_days: int = _default("dead_retention_days")
    log_level: str = _default("log_level")
    log_format: str = _default("log_format")
    sentry_dsn: str | None = None
    # Wake-ups: workers LISTEN on this URL instead of database_url (a direct connection past a
    # pooler in transaction mode, which cannot deliver notifications) ...
    listen_database_url: str | None = None
    # ... or on none at all: new tasks are then found by the poll of sleep_interval.
    poll_only: bool = False

    @property
    def wake_up_url(self) -> str | None:
        """Where workers LISTEN for new tasks; None when they only poll."""
        return None if self.poll_only else (self.listen_database_url or self.database_url)


_current: ProcessorSettings | None = None


def enter_processor(settings: ProcessorSettings) -> None:
    """This process is the supervisor or a worker of a processor with ``settings``."""
    global _current
    _current = settings


def processor_settings() -> ProcessorSettings | None:
    """The settings of the processor this process belongs to; None in an application."""
    return _current


@contextmanager
def acting_as_processor(settings: ProcessorSettings) -> Iterator[None]:
    """Within, this process acts as part of a processor (an application's tests running
    waiting tasks in-process, :mod:`worker.inline`)."""
    global _current
    previous, _current = _current, settings
    try:
        yield
    finally:
        _current = previous
