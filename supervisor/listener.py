"""The processor's one listening connection, and every reason to wake an idle worker.

One connection per processor listens on the ``task_processor`` channel; the supervisor's loop
waits in ``select()`` on it beside its signal pipe, so a notification reaches it within a
scheduler tick of the commit. It then puts wake-up tokens in the workers' shared pipe
(:mod:`worker.wakeup`), one per notification and at most one per idle worker; a worker whose
claim comes back full wakes the next one itself.

The processor also owns the timers that each worker used to keep:

- the **fallback poll**: when no worker claimed for ``--sleepintervalms``, one idle worker is
  woken to claim. An idle processor therefore checks the queue once per interval, whatever
  ``--numthreads`` is; a task that no notification announced waits at most one interval for a
  worker, as it did when every idle worker slept that long between its own checks.
- **due times**: a worker whose claim found nothing publishes, in its heartbeat slot, when the
  next delayed task falls due; the processor wakes one idle worker then.

New tasks announce themselves only to processors that wait for them (migration 0013: every
NOTIFY serialises the commits of all producers). The listener keeps the processor's row saying
so: ``awaits_tasks`` as soon as a worker waits (its claim found nothing), then a claim at once
and another shortly after, for the inserts that ran their trigger just before and committed
just after; not any more once every worker has been busy for ``QUIET_AFTER``, when each claims
again after its batch anyway.

The listening connection never blocks the loop: it connects with a short timeout, issues its
one statement under a client-side deadline, and is only read when ``select()`` says it has
data. While it is down, the fallback poll and due times go on, and the first thing after a
reconnect is a claim, for what was announced meanwhile.
"""

from __future__ import annotations

import logging
import time

import psycopg2

from common import db
from common.lifecycle import LISTEN
from common.logs import one_line
from supervisor.queries import AWAIT_TASKS
from worker.heartbeat import Beat, WorkerState
from worker.wakeup import WakeUps

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2  # seconds: the loop that watches the workers waits no longer
RECONNECT_BASE, RECONNECT_CAP = 0.5, 5.0
QUIET_AFTER = 1.0  # seconds of every worker busy before inserts stop announcing themselves
RECHECK_AFTER = 0.05  # after asking for announcements again, the second claim


class Listener:
    def __init__(
        self,
        database_url: str | None,
        processor_id: str,
        sleep_interval: float,
        statement_deadline: float,
        wakeups: WakeUps,
    ) -> None:
        self.database_url = database_url
        self.processor_id = processor_id
        self.sleep_interval = sleep_interval
        self.statement_deadline = statement_deadline
        self.wakeups = wakeups
        self.connection: db.Connection | None = None
        self.next_connect = 0.0
        self.reconnect_delay = RECONNECT_BASE
        self.last_wake = time.monotonic()  # a worker claims at start
        self.missed = False  # notifications may have been lost: claim once connected
        self.awaiting: bool | None = None  # what the processor's row says (None: unknown)
        self.busy_since: float | None = None  # since when no worker has waited
        self.recheck_at: float | None = None  # the second claim after asking again
        self.may_record = True  # False once the row refused an update: it stays as it was

    def fds(self) -> list[db.Connection]:
        """What ``select()`` should watch: the listening connection, when there is one."""
        return [self.connection] if self.connection is not None else []

    def timeout(self, now: float, idle: list[Beat]) -> float:
        """Seconds until the next timed wake-up (fallback poll, due time, second claim,
        reconnect)."""
        moments = [self._next_poll(), *self._pending_due(idle)]
        if self.recheck_at is not None:
            moments.append(self.recheck_at)
        if self.connection is None and self.database_url is not None:
            moments.append(self.next_connect)
        return max(0.0, min(moments) - now)

    def tend(self, readable: bool, idle: list[Beat]) -> None:
        """Read notifications (when ``readable``), reconnect when due, and wake as many idle
        workers as there are reasons to: notifications, a due time reached, the poll."""
        now = time.monotonic()
        announced = self._take_notifications() if readable else 0
        if self.connection is None and self.database_url is not None and now >= self.next_connect:
            self._connect(now)
        if self.connection is not None and self.may_record:
            self._keep_awaiting(now, any(beat.state == WorkerState.WAITING for beat in idle))
        tokens = min(announced, len(idle))
        due = [moment for moment in self._pending_due(idle) if moment <= now]
        recheck = self.recheck_at is not None and now >= self.recheck_at
        if recheck:
            self.recheck_at = None  # served now, or by a busy worker's claim after its batch
        if idle and (due or self.missed or recheck or now >= self._next_poll()):
            tokens = max(tokens, 1)
        if tokens or (not idle and now >= self._next_poll()):
            # With no worker idle, none is woken: a busy worker claims after every batch,
            # and a new one when it starts. Either way the queue was just looked at.
            self.last_wake = now
            self.missed = False
        self.wakeups.ring(tokens)

    def reconfigure(
        self, database_url: str | None, sleep_interval: float, statement_deadline: float
    ) -> None:
        """Apply a reloaded configuration: the fallback poll's interval from the next wake-up
        on, and a new listening URL (or ``None``: poll only) by reconnecting at once."""
        self.sleep_interval = sleep_interval
        self.statement_deadline = statement_deadline
        if database_url == self.database_url:
            return
        self.close()
        self.database_url = database_url
        self.next_connect = 0.0
        self.reconnect_delay = RECONNECT_BASE
        self.missed = True  # announcements may be lost in the switch: claim once
        self.awaiting = None
        self.busy_since = self.recheck_at = None
        self.may_record = True
        logger.info(
            "listening %s",
            "on nothing: polling only"
            if database_url is None
            else f"on {db.describe(database_url)}",
        )

    def close(self) -> None:
        db.close_quietly(self.connection)
        self.connection = None

    # -- internals ----------------------------------------------------------------------------

    def _next_poll(self) -> float:
        return self.last_wake + self.sleep_interval

    def _pending_due(self, idle: list[Beat]) -> list[float]:
        """Due times published by idle workers (their slot's deadline) that fell due after the
        last wake-up: older ones were served by it."""
        return [beat.deadline for beat in idle if beat.deadline > self.last_wake]

    def _keep_awaiting(self, now: float, waiting: bool) -> None:
        """Keep the processor's row saying whether it waits for new tasks: yes as soon as a
        worker waits, no once none has for ``QUIET_AFTER``."""
        if waiting:
            self.busy_since = None
            if self.awaiting is not True and self._write_awaiting(now, True):
                # An insert whose trigger ran before this commit announced nothing, and may
                # have committed after the waiting workers' last claim: claim now, and again
                # shortly after for one whose commit was still on its way. (One whose
                # transaction stays open longer is found by the fallback poll.)
                self.missed = True
                self.recheck_at = now + RECHECK_AFTER
        elif self.busy_since is None:
            self.busy_since = now
        elif self.awaiting is not False and now - self.busy_since >= QUIET_AFTER:
            self._write_awaiting(now, False)

    def _write_awaiting(self, now: float, awaiting: bool) -> bool:
        assert self.connection is not None
        try:
            with (
                db.Deadline(self.connection, self.statement_deadline),
                self.connection.cursor() as cursor,
            ):
                cursor.execute(
                    AWAIT_TASKS, {"processor_id": self.processor_id, "awaiting": awaiting}
                )
        except (psycopg2.Error, db.DatabaseUnavailable) as error:
            if db.is_connection_error(error):
                self._drop(now, error)
            else:
                # The listening URL's role may not update the row (one made to LISTEN only):
                # the row keeps saying nothing, and every insert announces itself, as to a
                # processor of an earlier release. Listening goes on.
                self.may_record = False
                logger.error(
                    "cannot record in task_processor.processors whether this processor waits "
                    "for tasks (%s); every new task will send it a notification, which slows "
                    "enqueueing; let the role of the listening connection UPDATE that table",
                    one_line(error),
                )
            return False
        self.awaiting = awaiting
        return True

    def _connect(self, now: float) -> None:
        assert self.database_url is not None
        try:
            self.connection = db.connect(
                self.database_url, "listener", connect_timeout=CONNECT_TIMEOUT
            )
            with (
                db.Deadline(self.connection, self.statement_deadline),
                self.connection.cursor() as cursor,
            ):
                cursor.execute(LISTEN)
        except (psycopg2.Error, db.DatabaseUnavailable) as error:
            self._drop(now, error)
            return
        self.reconnect_delay = RECONNECT_BASE
        self.missed = True
        self.awaiting = None  # written again once a worker waits

    def _take_notifications(self) -> int:
        """How many notifications arrived (each is at least one committed transaction)."""
        connection = self.connection
        if connection is None:
            return 0
        try:
            connection.poll()
        except psycopg2.Error as error:
            self._drop(time.monotonic(), error)
            return 0
        count = len(connection.notifies)
        connection.notifies.clear()
        return count

    def _drop(self, now: float, error: BaseException) -> None:
        logger.warning(
            "listening connection: %s; reconnecting in %.1f s",
            " ".join(str(error).split())[:300],
            self.reconnect_delay,
        )
        self.close()
        self.next_connect = now + self.reconnect_delay
        self.reconnect_delay = min(self.reconnect_delay * 2, RECONNECT_CAP)
        self.missed = True
