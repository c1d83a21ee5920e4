"""The supervisor's side of ``--metrics-bind``: its own counters, and the metrics server process.

The supervisor counts workers started, workers killed by reason and lease renewals that failed,
and publishes them in its page of the :class:`~worker.metrics.MetricsBoard` (after the workers'
pages) whenever they change. The HTTP server runs in a process of its own, forked by the
supervisor before it opens its database connection or starts a worker: the supervisor forks
workers all its life, and a thread alive at a fork (prometheus_client's server thread) would
leave its locks held in every child. The server process only reads the board; the supervisor
reaps it like a worker, restarts it if it dies, and stops it last.

Without ``--metrics-bind`` the supervisor holds :meth:`ProcessorMetrics.disabled`: no board,
no process, every method a no-op, and workers count nothing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import NoReturn

from worker.metrics import MetricsBoard

logger = logging.getLogger(__name__)

# Why a worker was killed: the values of task_processor_workers_killed_total's reason label.
KILLED_TIMEOUT = "timeout"  # busy past its task's deadline
KILLED_STUCK = "stuck"  # idle or booting, silent past the grace period
KILLED_STOPPED = "stopped"  # stopped (SIGSTOP) past the grace period
KILLED_MEMORY = "memory"  # its task grew past --max-worker-memory-mb
KILLED_LEASE = "lease"  # its leases could not be renewed in time
KILLED_LEASE_FENCE = "lease_fence"  # its own lease fence fired (the supervisor was paused)
KILLED_DRAIN_DEADLINE = "drain_deadline"  # still running at the end of --drain-timeout
KILLED_SHUTDOWN = "shutdown"  # the processor was stopped at once
DIED = "died"  # not killed by the supervisor: a crash, the OOM killer, a kill from outside
KILL_REASONS = (
    KILLED_TIMEOUT,
    KILLED_STUCK,
    KILLED_STOPPED,
    KILLED_MEMORY,
    KILLED_LEASE,
    KILLED_LEASE_FENCE,
    KILLED_DRAIN_DEADLINE,
    KILLED_SHUTDOWN,
    DIED,
)

START_TIMEOUT = 10.0  # how long the server process may take to bind
RESTART_DELAY = 1.0

# The server process: serves ``board`` on (host, port), writes one JSON line to the file
# descriptor (``{"port": N}`` or ``{"error": "..."}``) once it listens or cannot, never returns.
Serve = Callable[[MetricsBoard, str, int, int], NoReturn]


class MetricsServerError(Exception):
    """The metrics server could not start (the address is taken, say)."""


class ProcessorMetrics:
    def __init__(
        self, bind: tuple[str, int] | None, serve: Serve | None, worker_pages: int
    ) -> None:
        self.bind = bind
        self.serve = serve
        self.worker_pages = worker_pages
        self.board = MetricsBoard(worker_pages + 1) if bind else None
        self.server_pid: int | None = None
        self.restart_at = 0.0
        self.workers_started = 0
        self.killed: Counter[str] = Counter()
        self.renewals_failed = 0
        self.slots_used = 0
        self._published: tuple | None = None

    @classmethod
    def disabled(cls) -> ProcessorMetrics:
        return cls(None, None, 0)

    # -- counting -------------------------------------------------------------------------

    def worker_started(self, slot: int) -> None:
        self.workers_started += 1
        self.slots_used = max(self.slots_used, slot + 1)

    def worker_killed(self, reason: str) -> None:
        self.killed[reason] += 1

    def publish(self, renewals_failed: int) -> None:
        """Publish the supervisor's counters if they changed (once per turn of its loop)."""
        if self.board is None:
            return
        self.renewals_failed = renewals_failed
        value = (self.slots_used, self.workers_started, dict(self.killed), renewals_failed)
        if value != self._published:
            self.board.write(self.worker_pages, value)
            self._published = value

    # -- the server process ---------------------------------------------------------------

    def start(self, signal_mask: Iterable[int]) -> None:
        """Fork the server process and wait until it listens; :class:`MetricsServerError` if
        it cannot. Port 0 becomes the port it got, kept for restarts."""
        if self.bind is None or self.serve is None or self.board is None:
            return
        read, write = os.pipe()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal_mask)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(read)
            os.close(write)
            raise MetricsServerError(f"cannot start the metrics server: {error}") from None
        if pid == 0:
            try:
                os.close(read)
                _become_server_process(blocked)
                self.serve(self.board, self.bind[0], self.bind[1], write)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(write)
        self.server_pid = pid
        try:
            answer = _read_answer(read)
        finally:
            os.close(read)
        if "port" not in answer:
            self._kill_server()
            raise MetricsServerError(
                f"cannot serve metrics on {_address(*self.bind)}: "
                f"{answer.get('error', 'no answer')}"
            )
        self.bind = (self.bind[0], answer["port"])
        logger.info("metrics on http://%s/metrics", _address(*self.bind))

    def reaped(self, pid: int) -> bool:
        """The supervisor reaped ``pid``: True if it was the server process."""
        if pid != self.server_pid or self.server_pid is None:
            return False
        logger.error(
            "the metrics server (pid %d) exited; restarting it in %.0f s", pid, RESTART_DELAY
        )
        self.server_pid = None
        self.restart_at = time.monotonic() + RESTART_DELAY
        return True

    def tend(self, signal_mask: Iterable[int]) -> None:
        """Restart the server process if it died."""
        if self.bind is None or self.server_pid is not None or time.monotonic() < self.restart_at:
            return
        try:
            self.start(signal_mask)
        except MetricsServerError as error:
            logger.error("%s; retrying in %.0f s", error, RESTART_DELAY)
            self.restart_at = time.monotonic() + RESTART_DELAY

    def stop(self) -> None:
        """Stop the server process and reap it."""
        self._kill_server()

    def _kill_server(self) -> None:
        pid, self.server_pid = self.server_pid, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _become_server_process(signal_mask: set[int]) -> None:
    """In the forked server process: die with the supervisor, leave its signals to it (a
    terminal's Ctrl-C reaches the whole group), then let signals in."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)


def _read_answer(fd: int) -> dict:
    """The server process's one JSON line, waiting at most :data:`START_TIMEOUT`."""
    deadline = time.monotonic() + START_TIMEOUT
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return {"error": f"it did not start within {START_TIMEOUT:.0f} s"}
        chunk = os.read(fd, 4096)
        if not chunk:
            return {"error": "it exited before it listened"}
        data += chunk
    try:
        answer = json.loads(data)
    except ValueError:
        return {"error": "it gave an unreadable answer"}
    return answer if isinstance(answer, dict) else {"error": "it gave an unreadable answer"}


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
