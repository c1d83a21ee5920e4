"""One worker process: claim a batch under a lease, run it, record it, wait for more.

A worker is forked by the supervisor and never returns to the supervisor's code: it leaves
through ``os._exit``. It writes its heartbeat slot before every task and while idle; the
supervisor reads it and kills the worker if it goes silent or overruns a task's deadline.
"""

from __future__ import annotations

import _signal
import logging
import math
import os
import select
import signal
import time

import psycopg2
import psycopg2.errors
import setproctitle

from common import db, logs, registry, sentry, tracing
from common.lifecycle import NO_TIME_LIMIT_MS, lease_owner
from common.logs import one_line
from common.prepared import Prepared, vanished
from common.procfs import resident_mb
from common.settings import ProcessorSettings
from worker import libc, queries
from worker.fence import Fence, FenceBoard
from worker.heartbeat import Slots, WorkerState
from worker.metrics import AttemptMetrics, MetricsBoard
from worker.runner import ClaimedTask, Outcome, run_within_deadline
from worker.tracing import run_in_span
from worker.wakeup import Waiter, WakeUps

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_FLUSH_AFTER = 0.010  # record finished attempts before the next task once they are this old
_SLOW_TASK = 0.050  # after a task this slow, idle peers may take the rest of its batch
_HANDOFF_WINDOW = 0.050  # how long a worker leaves tasks it handed off to its peers
_DUE_MARGIN = 0.002  # wake this long after a delayed task falls due, not before
_MAX_WAIT = 1.0  # an idle worker beats its slot (shared memory only) at least this often
_RETRY_BASE, _RETRY_CAP = 0.1, 5.0  # reconnect backoff while the database is down


class Worker:
    def __init__(
        self,
        settings: ProcessorSettings,
        slots: Slots,
        slot: int,
        generation: int,
        parent_pid: int,
        signal_mask: set[int] | None = None,
        *,
        fence_board: FenceBoard,
        wakeups: WakeUps,
        metrics_board: MetricsBoard | None,
        claim_at_start: bool,
    ) -> None:
        self.settings = settings
        self.slots = slots
        self.slot = slot
        self.generation = generation
        self.parent_pid = parent_pid
        self.signal_mask = signal_mask if signal_mask is not None else set()
        self.fence_board = fence_board
        self.wakeups = wakeups
        self.owner = lease_owner(settings.processor_id, slot, generation)
        self.pid = 0  # its own, once forked (the supervisor builds it before the fork)
        self.claim_at_start = claim_at_start
        self.connection: db.Connection | None = None  # opened by the first claim
        self.fenced = False  # the lease fence is armed by the first claim too
        self.stopping = False
        self.tasks_done = 0
        self.due_at = 0.0  # when the next delayed task falls due (monotonic; 0: none known)
        self.unrecorded: list[Outcome] = []  # a batch's last outcomes, recorded with the claim
        self.prepared = True  # False once a pooler has dropped a prepared statement
        self._wakeup_read = -1
        self._waiter: Waiter | None = None  # made at boot, with the signal pipe it watches
        self.known = registry.identifiers()  # claimed: only tasks this processor can run
        # counted only with --metrics-bind; the slot's page carries on its predecessors' counts
        self.metrics = AttemptMetrics(metrics_board, slot) if metrics_board else None

    # -- start-up -----------------------------------------------------------------------------

    def run(self) -> None:
        """The child's whole life; never returns."""
        code = 0
        try:
            self._boot()
            self._loop()
        except _StopRequested:
            logger.info(
                "worker %s leaves without waiting for the database: it was asked to stop",
                self.owner,
            )
        except BaseException:
            logger.exception("worker %s crashed", self.owner)
            code = 1
        finally:
            tracing.flush()
            logging.shutdown()
            os._exit(code)

    def _boot(self) -> None:
        self._die_with_parent()
        self._lead_process_group()
        self._reset_signals()
        self.pid = os.getpid()
        self._beat(WorkerState.BOOTING)
        logs.set_role(f"worker {self.slot}")
        sentry.init(self.settings.sentry_dsn, f"worker {self.slot}")
        self._title("booting")

    def _die_with_parent(self) -> None:
        """Ask the kernel to SIGKILL this process when the supervisor dies, then make sure it
        did not die already (between fork and prctl)."""
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.parent_pid:
            os._exit(0)

    def _arm_fence(self) -> None:
        """Die by the kernel's hand before this processor's leases can expire (see
        worker/fence.py), whatever the supervisor does. Armed before the first claim (a worker
        that holds no lease needs no fence), so that an idle worker that never claimed has no
        timer and no thread; a fence armed late, past the published time, fires at once."""
        Fence(self.fence_board, min(1.0, self.settings.lease_seconds / 20)).start()
        self.fenced = True

    def _lead_process_group(self) -> None:
        """Lead a process group of its own, which the processes that tasks start join: the
        supervisor kills the group when this worker exits, so that nothing a task left running
        outlives it."""
        os.setpgid(0, 0)

    def _reap_children(self) -> None:
        """Collect the processes that tasks started and that exited since, so that none stays
        a zombie. Between tasks only: a running task may still wait for its own children."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _reset_signals(self) -> None:
        """Drop the supervisor's handlers: TERM asks this worker to stop after its task; the
        rest is the supervisor's business. USR1 dumps every thread's stack to the log, as the
        supervisor registered it before forking.

        Handlers and mask are set through ``_signal``, the C module under ``signal``: the
        wrappers of ``signal`` turn every number and handler they return into an enum member,
        and the supervisor's handler, a bound method, fails that only after its ``repr()`` has
        walked the whole supervisor, copying its pages into each worker (bench/memory.py)."""
        signal.set_wakeup_fd(-1)
        for signum in (
            signal.SIGINT,
            signal.SIGHUP,
            signal.SIGTTIN,
            signal.SIGTTOU,
            signal.SIGQUIT,
        ):
            # Caught and dropped rather than SIG_IGN: an ignored signal would stay ignored in
            # every program a task starts, while a handler resets to the default on exec.
            _signal.signal(signum, _drop_signal)
            signal.siginterrupt(signum, False)  # task code's system calls are not interrupted
        _signal.signal(signal.SIGCHLD, _signal.SIG_DFL)
        _signal.signal(signal.SIGTERM, self._on_term)
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_read = read
        self._waiter = self.wakeups.waiter(read)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        # The supervisor blocked signals around fork so that none sent in between reached its
        # handlers in this process; with ours in place, they are delivered now.
        _signal.pthread_sigmask(signal.SIG_SETMASK, self.signal_mask)

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        """Claim while there is work; when a claim finds none, wait for a wake-up token.

        The worker never polls: the processor wakes it when a commit announces tasks, when a
        delayed task falls due (the worker publishes the due time in its slot), and once per
        ``--sleepintervalms`` as the fallback. Of the workers started together, only the first
        claims at once; the others wait for a token, and connect to the database only when
        they first take one (a claim that comes back full wakes the next worker)."""
        wake = self.claim_at_start
        hold_until = 0.0  # after handing tasks to idle peers, let them claim first
        while not self.stopping and not self._should_recycle():
            self._reap_children()
            now = time.monotonic()
            if wake and now >= hold_until:
                batch, due_in = self._database(self._claim)
                self.due_at = 0.0 if due_in is None else time.monotonic() + due_in + _DUE_MARGIN
                if batch:
                    if len(batch) >= self.settings.queue_pop_size:
                        self.wakeups.ring_unless_pending()  # more may wait: wake a peer
                    if self._run_batch(batch):
                        hold_until = time.monotonic() + _HANDOFF_WINDOW
                    continue  # there may be more: claim again before sleeping
                wake = False
            self._beat(WorkerState.WAITING, 0, self.due_at)
            self._title("idle")
            if wake:  # holding back after a hand-off: the tokens are for the peers
                self._wait(max(0.0, min(hold_until - now, _MAX_WAIT)), take_token=False)
            else:
                wake = self._wait(_MAX_WAIT)
        if self.unrecorded:
            self._record(self.unrecorded)
        logger.debug("worker %s leaves after %d tasks", self.owner, self.tasks_done)

    def _wait(self, timeout: float, take_token: bool = True) -> bool:
        """Sleep until a wake-up token (if ``take_token``), a signal or ``timeout``; True if
        this worker took a token (it claims next)."""
        try:
            if take_token:
                assert self._waiter is not None
                signalled, token = self._waiter.wait(timeout)
            else:
                readable, _, _ = select.select([self._wakeup_read], [], [], timeout)
                signalled, token = bool(readable), False
        except OSError:
            signalled = token = False
        if signalled:
            try:
                while os.read(self._wakeup_read, 512):
                    pass
            except BlockingIOError:
                pass
        return token and self.wakeups.take()

    def _run_batch(self, batch: list[ClaimedTask]) -> bool:
        """Run a claimed batch in order; True if its rest was handed to idle peers.

        The rest of the batch goes back to the queue when this worker is asked to stop or is
        due for recycling; when a lease turned out to be lost (the rest may be another
        worker's by now); and after a slow task while another worker idles, so that quick tasks
        do not wait behind slow ones in one worker while others have nothing to do."""
        pending: list[Outcome] = []
        oldest = 0.0
        slow = False
        for index, task in enumerate(batch):
            leaving = self.stopping or self._should_recycle()
            handing_off = slow and self.slots.any_idle(self.slot)
            if pending and (leaving or handing_off or time.monotonic() - oldest > _FLUSH_AFTER):
                kept = self._record(pending)
                pending = []
                if not kept:
                    self._give_back(batch[index:])
                    return False
            if leaving or handing_off:
                self._give_back(batch[index:])
                return handing_off
            started = time.monotonic()
            deadline = _deadline(started, task.timeout_ms)
            self._beat(WorkerState.BUSY, task.id, deadline)
            self._title(f"busy task {task.id} {task.identifier}")
            outcome = self._attempt(task, deadline, started)
            finished = time.monotonic()
            slow = finished - started > _SLOW_TASK
            if not pending:
                oldest = finished
            pending.append(outcome)
            self.tasks_done += 1
        self.unrecorded = pending  # the next claim records them (or the worker, as it leaves)
        return False

    def _attempt(self, task: ClaimedTask, deadline: float, started: float) -> Outcome:
        """Run one task, in its trace span when the process uses OpenTelemetry, and count it
        when metrics are on (published with the next recording, never a statement of its own)."""
        outcome = run_in_span(task, lambda: run_within_deadline(task, deadline))
        if self.metrics is not None:
            self.metrics.observe(task, outcome.result, started, time.monotonic())
        return outcome

    def _record(self, outcomes: list[Outcome]) -> bool:
        """Record ``outcomes``; False if a lease was lost on the way. An outcome that the
        database refuses (an unstorable value) is recorded as a failure that says why, so one
        bad outcome never takes the worker down with its whole batch."""
        self._beat(WorkerState.IDLE)
        if self.metrics is not None:
            self.metrics.publish()
        try:
            return self._database(lambda: self._finish(outcomes))
        except (psycopg2.Error, ValueError) as error:
            logger.error(
                "worker %s could not record %d outcomes together (%s); recording them one by one",
                self.owner,
                len(outcomes),
                one_line(error),
            )
        kept = True
        for outcome in outcomes:
            try:
                kept &= self._database(lambda one=outcome: self._finish([one]))
            except (psycopg2.Error, ValueError) as error:
                replacement = outcome.unrecordable(error)
                kept &= self._database(lambda one=replacement: self._finish([one]))
        return kept

    def _give_back(self, tasks: list[ClaimedTask]) -> None:
        self._database(lambda: self._release([task.id for task in tasks]))

    # -- the database -------------------------------------------------------------------------

    def _database(self, work):
        """Run ``work`` until it succeeds, reconnecting with backoff while the database is down.
        The slot keeps beating meanwhile: a worker waiting for the database is not stuck. A
        worker asked to stop meanwhile leaves at once (:class:`_StopRequested`): what it holds
        is given back by the supervisor, once the database is back."""
        delay = _RETRY_BASE
        while True:
            try:
                if self.connection is None:
                    self._connect()
                return work()
            except psycopg2.errors.InvalidSqlStatementName:
                if not self.prepared:
                    raise
                logger.info(
                    "worker %s: the database connection does not keep prepared "
                    "statements (a pooler in transaction mode?): sending them as text",
                    self.owner,
                )
                self.prepared = False
            except (
                psycopg2.OperationalError,
                psycopg2.InterfaceError,
                db.DatabaseUnavailable,
            ) as error:
                self._drop_connection()
                if self.stopping:
                    raise _StopRequested from error
                logger.warning(
                    "worker %s: database unavailable (%s); retrying in %.1f s",
                    self.owner,
                    one_line(error, 200),
                    delay,
                )
                self._sleep_beating(delay)
                delay = min(delay * 2, _RETRY_CAP)

    def _connect(self) -> None:
        if not self.fenced:  # every claim runs on a connection: none runs unfenced
            self._arm_fence()
        self.connection = db.connect(self.settings.database_url, f"worker {self.slot}")
        if self.prepared:
            with self.connection.cursor() as cursor:
                for statement in self._statements():
                    statement.prepare_on(cursor)

    def _statements(self) -> queries.Statements:
        return queries.prepared(self.settings.queue_pop_size)

    @staticmethod
    def build_before_fork(settings: ProcessorSettings) -> None:
        """Build in the supervisor what every worker would otherwise build after fork, its
        prepared statements (cached): built there once, their pages stay shared; built in each
        worker, each would own a copy of every page the building touched."""
        queries.prepared(settings.queue_pop_size)

    def _sql(self, statement: Prepared) -> str:
        """The statement as prepared on this connection, or its text behind a pooler that
        does not keep prepared statements."""
        return statement.execute if self.prepared else statement.plain

    def _drop_connection(self) -> None:
        db.close_quietly(self.connection)
        self.connection = None

    def _claim(self) -> tuple[list[ClaimedTask], float | None]:
        """Claim a batch; also say in how many seconds the next delayed task falls due."""
        if self.unrecorded:
            return self._record_then_claim()
        with self._cursor() as cursor:
            cursor.execute(self._sql(self._statements().claim), self._claim_params())
            rows = cursor.fetchall()
        return self._claimed(rows)

    def _record_then_claim(self) -> tuple[list[ClaimedTask], float | None]:
        """Record the last batch's outcomes and claim the next batch in one statement. An
        outcome the database refuses fails the whole statement: then they are recorded on
        their own (one by one if need be, see :meth:`_record`) and the claim follows."""
        outcomes = self.unrecorded
        self._beat(WorkerState.IDLE)
        if self.metrics is not None:
            self.metrics.publish()
        try:
            with self._cursor() as cursor:
                cursor.execute(
                    self._sql(self._statements().record_then_claim),
                    {**self._outcome_params(outcomes), **self._claim_params()},
                )
                rows = cursor.fetchall()
        except (psycopg2.Error, ValueError) as error:
            if db.is_connection_error(error) or vanished(error):
                raise  # reconnect, or send plain statements, and try again (see _database)
            logger.error(
                "worker %s could not record %d outcomes with its claim (%s)",
                self.owner,
                len(outcomes),
                one_line(error),
            )
            self.unrecorded = []
            self._record(outcomes)
            return self._claim()
        self.unrecorded = []
        self._check_recorded(outcomes, set(rows[0][-1]))
        return self._claimed([row[:-1] for row in rows])

    def _claim_params(self) -> dict:
        return queries.claim_parameters(
            limit=self.settings.queue_pop_size,
            owner=self.owner,
            lease_seconds=self.settings.lease_seconds,
            known=self.known,
        )

    def _claimed(self, rows: list[tuple]) -> tuple[list[ClaimedTask], float | None]:
        """The tasks of a claim's rows, and in how many seconds the next delayed one is due."""
        if self.metrics is not None:
            self.metrics.claimed()
        due_in = rows[0][-1] if rows else None
        return [ClaimedTask(*row[:-1]) for row in rows if row[0] is not None], due_in

    def _outcome_params(self, outcomes: list[Outcome]) -> dict:
        return queries.finish_parameters(outcomes, self.owner)

    def _check_recorded(self, outcomes: list[Outcome], recorded: set[int]) -> bool:
        """False, with a warning, if a lease was lost before its outcome was recorded."""
        lost = [o.task_id for o in outcomes if o.task_id not in recorded]
        if lost:
            logger.warning(
                "worker %s lost the lease of tasks %s before recording them; their "
                "results were not written",
                self.owner,
                lost,
            )
        return not lost

    def _finish(self, outcomes: list[Outcome]) -> bool:
        with self._cursor() as cursor:
            cursor.execute(self._sql(self._statements().finish), self._outcome_params(outcomes))
            recorded = {row[0] for row in cursor.fetchall()}
        return self._check_recorded(outcomes, recorded)

    def _cursor(self) -> psycopg2.extensions.cursor:
        """A cursor of the worker's connection (the callers run inside :meth:`_database`,
        which connects first)."""
        assert self.connection is not None
        return self.connection.cursor()

    def _release(self, task_ids: list[int]) -> None:
        """Give back claimed tasks this worker did not start."""
        with self._cursor() as cursor:
            cursor.execute(queries.RELEASE_UNSTARTED, {"ids": task_ids, "owner": self.owner})

    # -- heartbeats and housekeeping ----------------------------------------------------------

    def _beat(self, state: WorkerState, task_id: int = 0, deadline: float = 0.0) -> None:
        self.slots.write(
            self.slot, self.pid, self.generation, state, task_id, deadline, self.tasks_done
        )

    def _sleep_beating(self, seconds: float) -> None:
        """Sleep ``seconds`` (without a connection), beating; a signal ends the sleep."""
        end = time.monotonic() + seconds
        while not self.stopping and (left := end - time.monotonic()) > 0:
            self._beat(WorkerState.IDLE)
            self._wait(min(left, _MAX_WAIT), take_token=False)

    def _title(self, text: str) -> None:
        setproctitle.setproctitle(f"tp-worker {self.slot} {text}"[:200])

    def _should_recycle(self) -> bool:
        """Replace this process between tasks after enough tasks or too much memory. Memory
        counts only once a task has run: a worker that starts above the limit would otherwise
        be replaced forever without doing any work."""
        if self.settings.max_tasks and self.tasks_done >= self.settings.max_tasks:
            return True
        if self.settings.max_memory_mb and self.tasks_done:
            rss_mb = resident_mb(self.pid)
            if rss_mb is not None and rss_mb > self.settings.max_memory_mb:
                logger.info(
                    "worker %s uses %.0f MiB (limit %d); recycling",
                    self.owner,
                    rss_mb,
                    self.settings.max_memory_mb,
                )
                return True
        return False


def _deadline(started: float, timeout_ms: int) -> float:
    """When a task started at ``started`` must end, on the monotonic clock; never for no time
    limit."""
    if timeout_ms == NO_TIME_LIMIT_MS:
        return math.inf
    return started + timeout_ms / 1000


class _StopRequested(Exception):
    """SIGTERM came while the database was unreachable: nothing left to finish, so leave."""


def _drop_signal(signum: int, frame: object) -> None:
    """The supervisor's signals (Ctrl-C in a terminal reaches every process): not ours."""
