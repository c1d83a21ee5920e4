"""The processor's settings, and whether this process is part of a processor.

``run-task-processor`` builds one :class:`ProcessorSettings` from its options; the supervisor
and every worker it forks run with it (a reload replaces the workers, which then run with the
new one). A process of the processor calls :func:`enter_processor` at start: from then on
``.delay()`` always enqueues, the queue is the processor's own database, and the built-in
tasks read their options from these settings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessorSettings:
    database_url: str
    processor_id: str
    sleep_interval: float  # seconds
    grace_period: float  # seconds
    queue_pop_size: int
    lease_seconds: int
    max_tasks: int  # per worker before it is replaced; 0: no limit
    max_memory_mb: int  # a worker's RSS before it is replaced; 0: no limit
    retention_days: int
    dead_retention_days: int
    log_level: str
    log_format: str
    sentry_dsn: str | None
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
