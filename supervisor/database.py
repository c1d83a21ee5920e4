"""The supervisor's side of the database: its heartbeat, its workers' leases, and requeueing
the tasks of whatever died. Every call is short and bounded (statement timeout), and a
database that is down never stops the supervisor's loop: work that could not be written is
kept and written once the database is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import psycopg2

from common import db, migrations, registry
from common.lifecycle import RunResult, lease_owner_prefix
from common.logs import one_line
from common.procfs import host_key, process_alive, start_ticks
from common.settings import ProcessorSettings
from supervisor import queries
from supervisor.worker_rows import NO_ROWS, REFRESH_AFTER, WorkerRows
from worker import fence

logger = logging.getLogger(__name__)

STATEMENT_TIMEOUT_MS = 5000
RECONNECT_CAP = 10.0
REQUEUE_EVERY = 10.0  # seconds between looks for expired leases and dead local processors
DUTY_PAUSE = 30.0
DUTY_STATEMENTS = 4  # a duty's run is a few statements: its deadline covers them all
LATE_CLAIM_SECONDS = 2.0
# A renewal later than this part of a lease may come after the lease expired, by the database's
# clock, and after another processor took the tasks.
LAPSE_FRACTION = 0.9


class Duty(Protocol):
    """Periodic database work of the supervisor (the recurring-task scheduler)."""

    def start(self, connection: db.Connection) -> None: ...
    def next_due(self) -> float: ...
    def run(self, connection: db.Connection) -> None: ...
    def tasks_announced(self) -> None:
        """New tasks were committed (a notification came): a duty may want to look sooner."""


class Release(NamedTuple):
    """The leases of one worker that exited, to give back (not before ``not_before``)."""

    owner: str
    task_id: int
    reason: str
    result: RunResult
    running_seconds: float
    not_before: float = 0.0


class SupervisorDatabase:
    def __init__(self, settings: ProcessorSettings, host: str, pid: int) -> None:
        self.settings = settings
        self.identity = {
            "host": host,
            "pid": pid,
            "host_key": host_key(),
            "process_start_ticks": start_ticks(pid),
            # what this processor's workers claim, for the status of the queue
            "task_identifiers": registry.identifiers(),
            "awaits_tasks": _awaits_tasks(settings),
        }
        self.state = "running"
        self.connection: db.Connection | None = None
        self.pending: list[Release] = []
        self.next_attempt = 0.0
        self.reconnect_delay = 0.5
        self.next_beat = 0.0
        self.last_beat = 0.0
        self.written_rows: tuple | None = None
        self.next_requeue = 0.0
        self.last_renewal = time.monotonic()
        self.renewed_at = fence.now()  # the start of the last renewal, on the fence's clock
        self.lapsed = False
        self.renewals_failed = 0  # renewals that were due and did not happen (for metrics)
        self.duties: list[Duty] = []
        self.duties_paused_until = 0.0

    def reconfigure(self, settings: ProcessorSettings) -> None:
        """A reloaded configuration; the next beat writes whether this processor listens."""
        self.settings = settings
        self.identity["awaits_tasks"] = _awaits_tasks(settings)

    @property
    def beat_interval(self) -> float:
        return min(5.0, self.settings.grace_period / 4, self.settings.lease_seconds / 4)

    # -- start and stop -----------------------------------------------------------------------

    def start(
        self,
        num_workers: int,
        stop_requested: Callable[[float], bool],
        duties: list[Duty],
        migrate: bool = True,
    ) -> bool:
        """Wait for the database (retrying with backoff), migrate, register this processor and
        requeue what dead processors on this host left. False if a signal said stop first;
        :class:`db.DatabaseRefused` (a refused password, a missing role or database) is raised
        at once. Later, in :meth:`tend`, a refusal is retried: a failover can briefly refuse."""
        delay = 0.5
        while True:
            try:
                self._connect()
                if migrate:
                    applied = migrations.migrate(self._connected())
                    for migration in applied:
                        logger.info("applied migration %04d_%s", migration.version, migration.name)
                else:
                    migrations.check_current(self._connected())
                self._execute(
                    queries.REGISTER,
                    {
                        "processor_id": self.settings.processor_id,
                        **self.identity,
                        "num_workers": num_workers,
                        "grace_period_ms": int(self.settings.grace_period * 1000),
                    },
                )
                self._requeue_dead_local_processors()
                for duty in duties:
                    connection = self._connected()
                    with db.Deadline(connection, DUTY_STATEMENTS * self.statement_deadline):
                        duty.start(connection)
                self.duties = duties
                self.last_renewal, self.renewed_at = time.monotonic(), fence.now()
                return True
            except db.DatabaseRefused:  # a configuration error: no retry will fix it
                self._drop()
                raise
            except (
                psycopg2.OperationalError,
                psycopg2.InterfaceError,
                db.DatabaseUnavailable,
            ) as error:
                self._drop()
                logger.warning(
                    "database unavailable at start (%s); retrying in %.1f s",
                    one_line(error, 300),
                    delay,
                )
                if stop_requested(delay):
                    return False
                delay = min(delay * 2, RECONNECT_CAP)

    def stop(self) -> None:
        """Write what is pending and mark this processor stopped (best effort)."""
        self.state = "stopped"
        if self.connection is None:
            try:
                self._connect()
            except db.DatabaseUnavailable as error:
                logger.error("could not record the stop: %s", error)
                return
        try:
            self._flush_releases(everything=True)
            self._execute(queries.MARK_STOPPED, {"processor_id": self.settings.processor_id})
        except psycopg2.Error as error:
            logger.error("could not record the stop: %s", one_line(error, 300))
        finally:
            self._drop()

    # -- the loop's calls ---------------------------------------------------------------------

    def tend(self, num_workers: int, own_owners: list[str], rows: WorkerRows = NO_ROWS) -> None:
        """Beat (with the workers' rows), renew leases, requeue, run the periodic duties: each
        when it is due."""
        now = time.monotonic()
        if now < self.next_attempt:
            return
        try:
            if self.connection is None:
                self._connect()
            self._flush_releases()
            if now >= self.next_beat or (
                rows.key != self.written_rows and now - self.last_beat >= REFRESH_AFTER
            ):
                self._beat(num_workers, own_owners, rows)
                self.next_beat = now + self.beat_interval
            if now >= self.next_requeue:
                self._execute(
                    queries.REQUEUE_EXPIRED,
                    {"own_owners": own_owners, "reason": "its lease expired"},
                )
                self._requeue_dead_local_processors()
                self.next_requeue = now + REQUEUE_EVERY
            self._run_duties(now)
            self.reconnect_delay = 0.5
        except (psycopg2.Error, db.DatabaseUnavailable) as error:
            self._drop()
            if now >= self.next_beat:
                self.renewals_failed += 1
            self.next_attempt = now + self.reconnect_delay
            logger.warning(
                "database: %s; retrying in %.1f s", one_line(error, 300), self.reconnect_delay
            )
            # Never wait longer than a beat: the leases must be renewed in time.
            self.reconnect_delay = min(self.reconnect_delay * 2, self.beat_interval)

    def tasks_announced(self) -> None:
        for duty in self.duties:
            duty.tasks_announced()

    def _run_duties(self, now: float) -> None:
        """Database errors propagate (reconnect and retry); any other error of a duty is a
        bug, logged, and the duties wait a while instead of failing on every turn."""
        if now < self.duties_paused_until:
            return
        for duty in self.duties:
            if now >= duty.next_due():
                try:
                    connection = self._connected()
                    with db.Deadline(connection, DUTY_STATEMENTS * self.statement_deadline):
                        duty.run(connection)
                except psycopg2.Error:
                    raise
                except Exception:
                    logger.exception(
                        "periodic duty %s failed; retrying in %.0f s",
                        type(duty).__name__,
                        DUTY_PAUSE,
                    )
                    self.duties_paused_until = now + DUTY_PAUSE

    def take_lapse(self) -> bool:
        """True once after a renewal came too late: another processor may have taken tasks
        that this processor's workers still run."""
        lapsed, self.lapsed = self.lapsed, False
        return lapsed

    def lease_at_risk(self) -> bool:
        """True once renewals have failed for most of a lease: other processors may soon
        take this processor's tasks."""
        return time.monotonic() - self.last_renewal > self.settings.lease_seconds * 0.75

    def release_worker(
        self, owner: str, task_id: int, reason: str, result: RunResult, running_seconds: float
    ) -> None:
        """Give back a dead worker's tasks now, or as soon as the database answers; and once
        more a little later, for a claim the worker sent as it died, which the server may
        commit after the first release."""
        release = Release(owner, task_id, reason, result, running_seconds)
        self.pending += [
            release,
            release._replace(task_id=0, not_before=time.monotonic() + LATE_CLAIM_SECONDS),
        ]
        if time.monotonic() >= self.next_attempt:  # else the database is known to be away
            self.tend_releases()

    def tend_releases(self) -> None:
        try:
            if self.connection is None:
                self._connect()
            self._flush_releases()
        except (psycopg2.Error, db.DatabaseUnavailable) as error:
            self._drop()
            self.next_attempt = time.monotonic() + self.reconnect_delay
            logger.warning("could not release leases yet (%s); will retry", one_line(error, 300))

    def forget_slot(self, slot: int) -> None:
        try:
            if self.connection is not None:
                self._execute(
                    queries.FORGET_WORKER_SLOT,
                    {"processor_id": self.settings.processor_id, "slot": slot},
                )
        except psycopg2.Error as error:
            self._drop()
            logger.warning(
                "could not delete the row of worker slot %d: %s", slot, one_line(error, 300)
            )

    # -- internals ----------------------------------------------------------------------------

    def _beat(self, num_workers: int, own_owners: list[str], rows: WorkerRows) -> None:
        """Renew the leases. The database dates them from the statement's start, and so does
        this: a renewal that comes after most of a lease went by (the supervisor was paused or
        blocked) may be too late, and says so through :meth:`take_lapse`."""
        started, fence_started = time.monotonic(), fence.now()
        late = started - self.last_renewal > self.settings.lease_seconds * LAPSE_FRACTION
        self._execute(
            queries.BEAT,
            {
                "processor_id": self.settings.processor_id,
                **self.identity,
                "num_workers": num_workers,
                "grace_period_ms": int(self.settings.grace_period * 1000),
                "state": self.state,
                "lease_seconds": self.settings.lease_seconds,
                "own_owners": own_owners,
                **rows.params(),
            },
        )
        self.last_renewal = self.last_beat = started
        self.renewed_at = fence_started
        self.written_rows = rows.key
        self.lapsed |= late

    def _flush_releases(self, everything: bool = False) -> None:
        now = time.monotonic()
        for release in [r for r in self.pending if everything or r.not_before <= now]:
            self._execute(
                queries.RELEASE_WORKER,
                {
                    "owner": release.owner,
                    "task_id": release.task_id,
                    "reason": release.reason,
                    "result": release.result.value,
                    "backoff": release.result in (RunResult.TIMEOUT, RunResult.FAILURE),
                    "running_seconds": release.running_seconds,
                },
            )
            self.pending.remove(release)

    def _requeue_dead_local_processors(self) -> None:
        """Processors on this host whose process is gone: requeue their leases now instead of
        waiting for them to expire, and mark them stopped."""
        rows = self._execute(
            queries.PROCESSORS_ON_HOST,
            {"host_key": self.identity["host_key"], "processor_id": self.settings.processor_id},
        )
        for processor_id, pid, process_start_ticks in rows:
            if process_alive(pid, process_start_ticks):
                continue
            requeued = self._execute(
                queries.REQUEUE_PROCESSOR,
                {
                    "owner_prefix": lease_owner_prefix(processor_id),
                    "reason": f"its processor {processor_id} died",
                },
            )
            self._execute(queries.MARK_STOPPED, {"processor_id": processor_id})
            logger.warning(
                "processor %s (pid %d) is gone: requeued %d of its tasks",
                processor_id,
                pid,
                requeued[0][0] if requeued else 0,
            )

    def _connect(self) -> None:
        if self.connection is None:
            self.connection = db.connect(
                self.settings.database_url,
                "supervisor",
                statement_timeout_ms=STATEMENT_TIMEOUT_MS,
                connect_timeout=max(2, int(self.statement_deadline)),
            )

    def _execute(self, statement: Any, params: dict) -> list[tuple]:
        connection = self._connected()
        with db.Deadline(connection, self.statement_deadline), connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def _connected(self) -> db.Connection:
        """The open connection (its callers connect first)."""
        assert self.connection is not None
        return self.connection

    @property
    def statement_deadline(self) -> float:
        """How long the supervisor waits for one answer: a little past the server's statement
        timeout, and short against the lease, so that a database that stops answering never
        blocks the loop that watches the workers."""
        return min(STATEMENT_TIMEOUT_MS / 1000 + 1, max(1.0, self.settings.lease_seconds / 4))

    def _drop(self) -> None:
        db.close_quietly(self.connection)
        self.connection = None


def _awaits_tasks(settings: ProcessorSettings) -> bool | None:
    """What this processor's row says of announcements at registration and at each beat:
    None lets the listener say; a processor that only polls asks for none."""
    return False if settings.wake_up_url is None else None
