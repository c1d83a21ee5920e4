"""The supervisor: one thread, one loop, a small method per concern.

Signal handlers only queue the signal number. Each turn of the loop handles queued signals,
reaps children (unknown ones too: the supervisor may be PID 1 in a container), kills stuck
workers, starts missing ones, tends the database (heartbeat, lease renewal, requeues) and
pings systemd.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import queue
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import setproctitle

from common import db, logs
from common.config import QUEUE_URL_VARIABLE
from common.lifecycle import RunResult, lease_owner
from common.procfs import is_stopped, resident_mb
from common.settings import ProcessorSettings, enter_processor
from supervisor import metrics as why_killed
from supervisor.database import Duty, SupervisorDatabase
from supervisor.listener import Listener
from supervisor.metrics import ProcessorMetrics
from supervisor.systemd import Notifier
from supervisor.worker_rows import WorkerRows, worker_rows
from worker import fence, libc
from worker.heartbeat import IDLE_STATES, Beat, Slots, WorkerState
from worker.process import Worker
from worker.wakeup import WakeUps

logger = logging.getLogger(__name__)

MAX_WORKERS = 256
TICK = 0.1  # the longest the loop sleeps when nothing happens
KILL_AFTER_DUMP = 0.3  # between the SIGUSR1 stack dump and the SIGKILL
MIN_UPTIME = 5.0  # a worker that dies sooner, unasked and not in a task, counts to a crash loop
CRASH_LOOP_LIMIT = 5  # that many quick deaths in a row in one slot stop the processor
RESPAWN_DELAY_CAP = 30.0

EXIT_OK, EXIT_FATAL = 0, 1
HANDLED_SIGNALS = {
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
}


class WorkerProcess:
    """The supervisor's record of one live worker process."""

    def __init__(
        self, slot: int, generation: int, pid: int, started: float, settings: ProcessorSettings
    ) -> None:
        self.slot = slot
        self.generation = generation
        self.pid = pid
        self.started = started
        self.settings = settings
        self.last_beat: Beat | None = None
        self.kill_reason: str | None = None
        self.kill_kind = ""  # the reason label of task_processor_workers_killed_total
        self.kill_result = RunResult.WORKER_LOST
        self.kill_beat: Beat | None = None  # what the worker was doing when the kill was decided
        self.kill_cancellable = False
        self.dump_sent_at: float | None = None
        self.stop_requested = False
        self.stopped_since: float | None = None  # when the kernel first showed it stopped

    @property
    def owner(self) -> str:
        return lease_owner(self.settings.processor_id, self.slot, self.generation)


class SlotHistory:
    """Per slot: generations started, and quick deaths in a row (crash-loop backoff)."""

    def __init__(self) -> None:
        self.generation = 0
        self.quick_deaths = 0
        self.respawn_at = 0.0


class Supervisor:
    """The processor's parent process: forks the workers, reads their heartbeats and kills the
    stuck, and tends the database (heartbeat, leases, duties); :meth:`run` is its loop."""

    def __init__(
        self,
        settings: ProcessorSettings,
        num_workers: int,
        drain_timeout: float,
        reload_settings: Callable[[], tuple[ProcessorSettings, int] | None],
        duties: list[Duty] | None = None,
        migrate: bool = True,
        metrics: ProcessorMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.num_workers = num_workers
        self.drain_timeout = drain_timeout
        self.reload_settings = reload_settings
        self.duties = duties or []
        self.migrate = migrate
        self.metrics = metrics or ProcessorMetrics.disabled()
        self.workers: dict[int, WorkerProcess] = {}
        self.pid = os.getpid()
        self.host = os.uname().nodename
        self.slots = Slots(MAX_WORKERS)
        self.fence = fence.FenceBoard()
        self.history = [SlotHistory() for _ in range(MAX_WORKERS)]
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.notifier = Notifier()
        self.database = SupervisorDatabase(self.settings, self.host, self.pid)
        self.wakeups = WakeUps()
        # On the queue's database, or on a direct connection past a pooler; none: poll only.
        self.listener = Listener(
            self.settings.wake_up_url,
            self.settings.processor_id,
            self.settings.sleep_interval,
            self.database.statement_deadline,
            self.wakeups,
        )
        self.signal_pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.turn_ends = 0.0
        self.draining_until: float | None = None
        self.stopping_now = False
        self.exit_code = EXIT_OK
        self.ready_sent = False
        self.next_watchdog = 0.0
        self.status = ""

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()
        self._title("starting")
        self.metrics.start(HANDLED_SIGNALS)  # before any connection or worker exists
        if not self.database.start(
            self.num_workers, self._signal_pending, self.duties, self.migrate
        ):
            return self.exit_code  # stopped by a signal while waiting for the database
        self._publish_fence()
        logger.info(
            "processor %s starting %d workers on %s",
            self.settings.processor_id,
            self.num_workers,
            db.describe(self.settings.database_url),
        )
        try:
            self._loop()
        except Exception:
            logger.critical("unexpected error in the supervisor's loop; stopping", exc_info=True)
            self.exit_code = EXIT_FATAL
        self._shutdown()
        return self.exit_code

    def _loop(self) -> None:
        while True:
            self._handle_signals()
            if self.stopping_now:
                return
            self._reap()
            self._watch_workers()
            if self.draining_until is not None:
                if not self.workers:
                    return
            else:
                self._replace_outdated()
                self._spawn_missing()
            # Counters first: a worker killed is counted before its task's state shows it.
            self._tend_metrics()
            self._tend_database()
            self._talk_to_systemd()

    # -- signals ------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._queue_signal)
        # SIGUSR1 dumps the stacks of the process it reaches to the log: the supervisor's, and
        # a worker's, which inherits this (the supervisor sends it to a worker before killing
        # it). Registered once here, it costs the workers no page of their own.
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        # A signal also writes to this pipe, which ends the loop's select() at once.
        signal.set_wakeup_fd(self.signal_pipe[1], warn_on_full_buffer=False)

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.signals.put(signum)

    def _signal_pending(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a signal while starting; True if it asks us to stop."""
        try:
            signum = self.signals.get(timeout=timeout)
        except queue.Empty:
            return False
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            logger.info("stopping before start: got %s", signal_name(signum))
            return True
        return False

    def _handle_signals(self) -> None:
        self._wait_for_events()
        while True:
            try:
                signum = self.signals.get_nowait()
            except queue.Empty:
                return
            self._handle_signal(signum)

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # the loop reaps next
        name = signal_name(signum)
        if signum == signal.SIGQUIT or (
            signum in (signal.SIGTERM, signal.SIGINT) and self.draining_until is not None
        ):
            logger.info("got %s: stopping at once", name)
            self.stopping_now = True
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self._start_drain(name)
        elif signum == signal.SIGHUP:
            self._reload()
        elif signum == signal.SIGTTIN:
            self._resize(self.num_workers + 1)
        elif signum == signal.SIGTTOU:
            self._resize(self.num_workers - 1)

    def _start_drain(self, name: str) -> None:
        logger.info(
            "got %s: draining (running tasks may finish within %.0f s)", name, self.drain_timeout
        )
        self.draining_until = time.monotonic() + self.drain_timeout
        self.notifier.stopping(f"draining {len(self.workers)} workers")
        self.database.state = "draining"
        for process in self.workers.values():
            self._ask_to_stop(process)

    def _reload(self) -> None:
        """Re-read the configuration; replace the workers one by one with the new one."""
        self.notifier.reloading()
        reloaded = self.reload_settings()
        if reloaded is None:
            logger.error("SIGHUP: the new configuration is invalid; keeping the current one")
        else:
            self.settings, num_workers = reloaded
            self.settings = _same_identity(self.settings, self.database.settings)
            self.database.reconfigure(self.settings)
            self.listener.reconfigure(
                self.settings.wake_up_url,
                self.settings.sleep_interval,
                self.database.statement_deadline,
            )
            enter_processor(self.settings)  # for the workers forked from now on too
            # Workers keep the logging they inherit: the new level and format reach them so.
            logs.configure(self.settings.log_level, self.settings.log_format, role="supervisor")
            logger.info("SIGHUP: configuration reloaded; replacing workers one by one")
            self._resize(num_workers)
        self.notifier.ready(self._status_line())

    def _resize(self, num_workers: int) -> None:
        num_workers = max(1, min(MAX_WORKERS, num_workers))
        if num_workers != self.num_workers:
            logger.info("workers: %d -> %d", self.num_workers, num_workers)
        self.num_workers = num_workers
        for slot, process in self.workers.items():
            if slot >= num_workers:
                self._ask_to_stop(process)

    # -- waiting, and waking idle workers --------------------------------------------------------

    def _wait_for_events(self) -> None:
        """Wait until a signal arrives or a tick has passed since the last turn of the loop;
        meanwhile, serve the listening connection and the timed wake-ups of idle workers as
        they come, so that a notification reaches a worker within milliseconds while the rest
        of the loop runs at most once a tick."""
        signal_read = self.signal_pipe[0]
        while True:
            now = time.monotonic()
            idle = self._idle_beats()
            timeout = min(max(0.0, self.turn_ends - now), self.listener.timeout(now, idle))
            try:
                watched: list[Any] = [signal_read, *self.listener.fds()]
                readable, _, _ = select.select(watched, [], [], timeout)
            except (OSError, ValueError):  # the listening connection broke under select
                readable = []
            notified = any(item is not signal_read for item in readable)
            self.listener.tend(notified, self._idle_beats() if readable else idle)
            if notified:
                self.database.tasks_announced()
            if signal_read in readable:
                _drain(signal_read)
                return
            if time.monotonic() >= self.turn_ends:
                self.turn_ends = time.monotonic() + TICK
                return

    def _idle_beats(self) -> list[Beat]:
        """The current beats of the live workers that wait for work."""
        idle = []
        for process in self.workers.values():
            beat = self.slots.read(process.slot)
            if beat is not None and beat.pid == process.pid and beat.state in IDLE_STATES:
                idle.append(beat)
        return idle

    # -- children -----------------------------------------------------------------------------

    def _spawn_missing(self) -> None:
        if self.database.lease_at_risk():
            return
        now = time.monotonic()
        due = [
            slot
            for slot in range(self.num_workers)
            if slot not in self.workers and now >= self.history[slot].respawn_at
        ]
        if not due:
            return
        Worker.build_before_fork(self.settings)
        _freeze_heap()
        # Programs that tasks start find the queue even when its URL was given to the
        # processor only as a flag or in a config file.
        with _exported(QUEUE_URL_VARIABLE, self.settings.database_url):
            for index, slot in enumerate(due):
                # One claim per burst: work may be waiting, and a full claim wakes the next
                # worker. The others connect when a token first comes their way, so that an
                # idle processor holds no connection (about 0.5 MiB in a worker) it does not use.
                self._spawn(slot, claim_at_start=index == 0)

    def _spawn(self, slot: int, claim_at_start: bool) -> None:
        history = self.history[slot]
        history.generation += 1
        self.slots.clear(slot)
        settings = self.settings
        # Signals are blocked across fork: one sent to the new worker before it installs its
        # own handlers waits for them instead of reaching copies of the supervisor's.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        # Built before fork: what building it touches stays shared with the supervisor.
        worker = Worker(
            settings,
            self.slots,
            slot,
            history.generation,
            self.pid,
            mask,
            fence_board=self.fence,
            wakeups=self.wakeups,
            metrics_board=self.metrics.board,
            claim_at_start=claim_at_start,
        )
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            history.respawn_at = time.monotonic() + 1.0
            logger.error("could not start worker %d: %s; retrying in 1 s", slot, error)
            return
        if pid == 0:
            try:
                worker.run()
            finally:
                os._exit(1)  # never back into the supervisor's loop
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.metrics.worker_started(slot)
        self.workers[slot] = WorkerProcess(
            slot, history.generation, pid, time.monotonic(), settings
        )
        logger.debug("worker %d started: pid %d, generation %d", slot, pid, history.generation)

    def _reap(self) -> None:
        while True:
            try:
                exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if exited is None:
                return
            pid = exited.si_pid
            process = next((p for p in self.workers.values() if p.pid == pid), None)
            if process is not None:
                _kill_leftovers(pid)
            _, status = os.waitpid(pid, 0)
            if process is None:
                if not self.metrics.reaped(pid):
                    logger.debug("reaped pid %d, not a worker", pid)  # orphans when PID 1
                continue
            del self.workers[process.slot]
            self._worker_exited(process, status)

    def _worker_exited(self, process: WorkerProcess, status: int) -> None:
        history = self.history[process.slot]
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        how = (
            f"exit status {os.WEXITSTATUS(status)}"
            if os.WIFEXITED(status)
            else signal_name(os.WTERMSIG(status))
        )
        beat = self._read_beat(process)  # the slot outlives its writer
        self.slots.clear(process.slot)
        task_id = beat.task_id if beat and beat.state == WorkerState.BUSY else 0
        if not process.kill_reason and self._fenced(status):
            process.kill_reason = (
                f"worker {process.slot} (pid {process.pid}) was killed by its "
                f"lease fence: its leases were not renewed in time"
            )
            process.kill_kind = why_killed.KILLED_LEASE_FENCE
            logger.error("%s", process.kill_reason)
        self._count_exit(process, clean)
        if process.kill_reason:
            reason, result = process.kill_reason, process.kill_result
            killed_for = process.kill_beat.task_id if process.kill_beat else 0
            if result != RunResult.WORKER_LOST and task_id != killed_for:  # it moved on meanwhile
                result = RunResult.WORKER_LOST
        elif clean:
            reason, result = "worker stopped", RunResult.WORKER_LOST
        else:
            reason, result = (
                f"worker {process.slot} (pid {process.pid}) died: {how}",
                RunResult.WORKER_LOST,
            )
            logger.error("%s%s", reason, f" while running task {task_id}" if task_id else "")
        self.database.release_worker(
            process.owner,
            task_id,
            reason,
            result,
            time.monotonic() - beat.beat if task_id and beat else 0.0,
        )
        if process.slot >= self.num_workers:
            self.database.forget_slot(process.slot)
        if clean or process.kill_reason or process.stop_requested:
            history.quick_deaths = 0
            history.respawn_at = 0.0
            return
        if task_id:  # the task's doing: its attempt counts, and it goes dead in the end
            return
        lived = time.monotonic() - process.started
        history.quick_deaths = history.quick_deaths + 1 if lived < MIN_UPTIME else 0
        if history.quick_deaths >= CRASH_LOOP_LIMIT:
            logger.critical(
                "worker %d died %d times in a row within %.0f s of starting: crash "
                "loop; stopping the processor",
                process.slot,
                history.quick_deaths,
                MIN_UPTIME,
            )
            self.exit_code = EXIT_FATAL
            self.stopping_now = True
        elif history.quick_deaths:
            delay = min(RESPAWN_DELAY_CAP, 0.5 * 2 ** (history.quick_deaths - 1))
            history.respawn_at = time.monotonic() + delay
            logger.warning("worker %d respawns in %.1f s", process.slot, delay)

    def _watch_workers(self) -> None:
        """Read every slot; kill the stuck, and everyone left at the drain deadline."""
        now = time.monotonic()
        grace = self.settings.grace_period
        for process in list(self.workers.values()):
            beat = self._read_beat(process)
            if process.kill_reason:
                self._finish_kill(process, now)
            elif self.draining_until is not None and now >= self.draining_until:
                self._kill(
                    process,
                    "killed at the drain deadline",
                    RunResult.WORKER_LOST,
                    why_killed.KILLED_DRAIN_DEADLINE,
                )
            elif self._stopped_too_long(process, now):
                self._kill(
                    process,
                    f"worker {process.slot} was stopped (SIGSTOP) for more than "
                    f"the grace period of {grace:.1f} s",
                    RunResult.WORKER_LOST,
                    why_killed.KILLED_STOPPED,
                )
            elif (verdict := stuck(beat, process.started, now, grace, process.slot)) is not None:
                reason, result = verdict
                kind = (
                    why_killed.KILLED_TIMEOUT
                    if result == RunResult.TIMEOUT
                    else why_killed.KILLED_STUCK
                )
                self._kill(process, reason, result, kind, cancellable=True)
            elif (
                beat is not None
                and beat.state == WorkerState.BUSY
                and (grown := self._over_memory(process)) is not None
            ):
                self._kill(
                    process,
                    f"task {beat.task_id} grew past the worker memory limit "
                    f"({grown:.0f} MiB > {process.settings.max_memory_mb} MiB)",
                    RunResult.FAILURE,
                    why_killed.KILLED_MEMORY,
                )

    def _over_memory(self, process: WorkerProcess) -> float | None:
        """The resident MiB of a busy worker over ``--max-worker-memory-mb``, else None. The
        worker checks its own size between tasks; a single task that keeps growing is stopped
        here, while it runs."""
        limit = process.settings.max_memory_mb
        if not limit:
            return None
        rss_mb = resident_mb(process.pid)
        return rss_mb if rss_mb is not None and rss_mb > limit else None

    def _stopped_too_long(self, process: WorkerProcess, now: float) -> bool:
        """A busy worker does not beat until its task ends, so a stopped one (SIGSTOP, a
        debugger) would look busy until its task's deadline: ask the kernel instead."""
        if not is_stopped(process.pid):
            process.stopped_since = None
            return False
        if process.stopped_since is None:
            process.stopped_since = now
        return now - process.stopped_since > self.settings.grace_period

    def _read_beat(self, process: WorkerProcess) -> Beat | None:
        """The slot's latest consistent beat if it is this process's, else the last one."""
        beat = self.slots.read(process.slot)
        if beat is not None and beat.pid == process.pid:
            process.last_beat = beat
        return process.last_beat

    def _kill(
        self,
        process: WorkerProcess,
        reason: str,
        result: RunResult,
        kind: str,
        cancellable: bool = False,
    ) -> None:
        """Dump the worker's stack (SIGUSR1), then SIGKILL it a moment later: only SIGKILL
        stops a worker stuck in C code. A kill for being stuck is called off if the worker
        beats again meanwhile (its task ended just in time): the next task must not pay."""
        logger.error(
            "killing worker %d (pid %d, task %s): %s",
            process.slot,
            process.pid,
            process.last_beat.task_id if process.last_beat else "-",
            reason,
        )
        process.kill_reason, process.kill_result, process.kill_kind = reason, result, kind
        process.kill_beat, process.kill_cancellable = process.last_beat, cancellable
        process.dump_sent_at = time.monotonic()
        _send(process.pid, signal.SIGUSR1)

    def _finish_kill(self, process: WorkerProcess, now: float) -> None:
        if process.dump_sent_at is None or now - process.dump_sent_at < KILL_AFTER_DUMP:
            return
        if process.kill_cancellable and process.last_beat != process.kill_beat:
            logger.warning("worker %d beat again before it was killed; it lives on", process.slot)
            process.kill_reason, process.kill_beat, process.dump_sent_at = None, None, None
            return
        _send(process.pid, signal.SIGKILL)
        process.dump_sent_at = None

    def _ask_to_stop(self, process: WorkerProcess) -> None:
        """SIGTERM: the worker finishes its task, gives back the rest of its batch, exits 0."""
        process.stop_requested = True
        _send(process.pid, signal.SIGTERM)

    def _replace_outdated(self) -> None:
        """After a reload, stop one worker that runs the old configuration at a time; it is
        respawned with the new one, and the next follows once it is up."""
        if any(p.stop_requested for p in self.workers.values()):
            return
        if any(
            p.last_beat is None or p.last_beat.state == WorkerState.BOOTING
            for p in self.workers.values()
            if p.settings is self.settings
        ):
            return
        for process in self.workers.values():
            if process.settings is not self.settings:
                self._ask_to_stop(process)
                return

    # -- database, systemd, shutdown ------------------------------------------------------------

    def _tend_database(self) -> None:
        """Beat and renew leases. A processor that could not renew its leases for most of
        their term stops every worker (one holding a batch may be idle between two tasks) and
        starts none until it can renew again: another processor may soon take those tasks,
        and an attempt must never run while its retry does."""
        owners = [p.owner for p in self.workers.values()]
        self.database.tend(self.num_workers, owners, self._worker_rows())
        self._publish_fence()
        lapsed = self.database.take_lapse()
        if lapsed or self.database.lease_at_risk():
            why = "renewed too late" if lapsed else "could not be renewed (database unreachable)"
            for process in self.workers.values():
                if not process.kill_reason:
                    self._kill(
                        process,
                        f"its lease {why}; stopped so that no other processor runs its tasks twice",
                        RunResult.WORKER_LOST,
                        why_killed.KILLED_LEASE,
                    )

    def _tend_metrics(self) -> None:
        """Publish the supervisor's counters; restart the metrics server if it died."""
        self.metrics.publish(self.database.renewals_failed)
        self.metrics.tend(HANDLED_SIGNALS)

    def _count_exit(self, process: WorkerProcess, clean: bool) -> None:
        """A worker killed, or one that died unasked, counts by why; one that left cleanly
        (asked to stop, recycled) does not."""
        if process.kill_reason:
            self.metrics.worker_killed(process.kill_kind)
        elif not clean:
            self.metrics.worker_killed(why_killed.DIED)

    def _publish_fence(self) -> None:
        """Tell the workers until when their leases are known to be held: a part of the
        shortest lease (workers of an older configuration may hold shorter ones) after the
        start of the last successful renewal. Each worker is killed by its own kernel timer at
        that time unless a later renewal moves it (see worker/fence.py)."""
        lease = min(
            [self.settings.lease_seconds]
            + [p.settings.lease_seconds for p in self.workers.values()]
        )
        self.fence.publish(self.database.renewed_at + fence.FENCE_FRACTION * lease)

    def _fenced(self, status: int) -> bool:
        """Did the lease fence kill this worker (SIGKILL once the published deadline passed)?"""
        deadline = self.fence.read()
        return (
            os.WIFSIGNALED(status)
            and os.WTERMSIG(status) == signal.SIGKILL
            and deadline is not None
            and fence.now() >= deadline
        )

    def _worker_rows(self) -> WorkerRows:
        """The live workers' rows for the database, from their latest beats."""
        live = [
            p for p in self.workers.values() if p.last_beat is not None and p.last_beat.pid == p.pid
        ]
        return worker_rows(
            [p.last_beat for p in live], [p.slot for p in live], self.settings.grace_period
        )

    def _talk_to_systemd(self) -> None:
        now = time.monotonic()
        if (
            not self.ready_sent
            and self.workers
            and all(
                p.last_beat is not None and p.last_beat.state in (*IDLE_STATES, WorkerState.BUSY)
                for p in self.workers.values()
            )
        ):
            self.ready_sent = True
            self.notifier.ready(self._status_line())
            logger.info(
                "processor %s ready: %d workers", self.settings.processor_id, len(self.workers)
            )
        interval = self.notifier.watchdog_interval
        if interval and now >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = now + interval
        status = self._status_line()
        if status != self.status:
            self.status = status
            self.notifier.status(status)
            self._title(status)

    def _status_line(self) -> str:
        busy = sum(
            1
            for p in self.workers.values()
            if p.last_beat is not None and p.last_beat.state == WorkerState.BUSY
        )
        done = sum(p.last_beat.tasks_done for p in self.workers.values() if p.last_beat)
        mode = "draining, " if self.draining_until is not None else ""
        return (
            f"{mode}{len(self.workers)}/{self.num_workers} workers, {busy} busy, "
            f"{done} tasks by current workers"
        )

    def _title(self, text: str) -> None:
        setproctitle.setproctitle(f"tp-supervisor {text}")

    def _shutdown(self) -> None:
        """Kill what is left, reap it, give back its tasks, and sign off."""
        for process in self.workers.values():
            if not process.kill_reason:
                process.kill_reason = "processor stopped at once"
                process.kill_kind = why_killed.KILLED_SHUTDOWN
            _send(process.pid, signal.SIGKILL)
        for process in list(self.workers.values()):
            try:
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
                _kill_leftovers(process.pid)
                _, status = os.waitpid(process.pid, 0)
            except ChildProcessError:
                status = 0
            del self.workers[process.slot]
            self._worker_exited(process, status)
        self.metrics.stop()
        self.notifier.stopping("stopped")
        self.listener.close()
        self.database.stop()
        logger.info("processor %s stopped", self.settings.processor_id)


def stuck(
    beat: Beat | None, started: float, now: float, grace: float, slot: int
) -> tuple[str, RunResult] | None:
    """Why a worker is stuck, as (reason, result to record), or None if it is not: busy past
    its task's deadline, or idle or booting and silent for longer than the grace period. A
    worker that never beat counts from ``started``."""
    if beat is not None and beat.state == WorkerState.BUSY:
        if now > beat.deadline:
            reason = (
                f"task {beat.task_id} exceeded its timeout of {beat.deadline - beat.beat:.1f} s"
            )
            return reason, RunResult.TIMEOUT
        return None
    last = beat.beat if beat is not None else started
    if now - last > grace:
        state = beat.state.name.lower() if beat else "booting"
        reason = (
            f"worker {slot} was {state} and silent for {now - last:.1f} s "
            f"(grace period {grace:.1f} s)"
        )
        return reason, RunResult.WORKER_LOST
    return None


def _same_identity(new: ProcessorSettings, old: ProcessorSettings) -> ProcessorSettings:
    """A reload keeps the processor id: it is the same processor."""
    return new._replace(processor_id=old.processor_id)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; real-time signals have no name of their own."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _kill_leftovers(pid: int) -> None:
    """Kill whatever the tasks of exited worker ``pid`` left running: its process group (each
    worker leads one). Called while the worker is still a zombie, so that its pid, which is the
    group's id, cannot belong to another process yet."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _freeze_heap() -> None:
    """Move every object that exists now out of the garbage collector's reach, in this
    process and in the children about to be forked (once before a burst of forks: what the
    supervisor writes between two of them is a page more for the workers already forked). A
    collection writes to the header of every object it scans; in a worker, that would copy
    each page of the inherited heap (the imported code, the task modules) that copy-on-write
    still shares with the supervisor.
    Then hand the C heap's free pages back to the kernel: the supervisor's RSS shrinks, and a
    worker's own allocations there start from fresh pages (bench/memory.py: -0.9 MiB for the
    supervisor and five workers)."""
    gc.freeze()
    gc.enable()
    if libc.malloc_trim is not None:
        libc.malloc_trim(0)


@contextmanager
def _exported(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment while workers are forked: each inherits
    it without setting it after fork (which would copy the pages that setting it writes), and
    the supervisor's own environment, from which a reload reads the options, stays as it was."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
