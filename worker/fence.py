"""Lease fencing: a worker's attempt ends before its lease can expire, whatever the supervisor
does.

The supervisor renews its workers' leases. If it stops being scheduled (SIGSTOP, a debugger, a
frozen cgroup), the leases expire, another processor requeues the tasks and runs them, and the
workers that still run them would make two attempts of one task run at once. So the workers do
not rely on the supervisor to stop them: after each successful renewal the supervisor publishes,
in shared memory, the time until which its leases are known to be held, and every worker keeps a
kernel timer armed at that time that delivers ``SIGKILL`` to itself. The kernel fires it even
while the worker is blocked in C code or the supervisor is stopped; a thread in the worker moves
the timer each time the published time moves.

Times are ``CLOCK_BOOTTIME``: like ``CLOCK_MONOTONIC`` it ignores changes of the wall clock, and
unlike it, it counts a suspend of the machine, during which the leases expire too.
"""

from __future__ import annotations

import _signal
import _thread
import ctypes
import logging
import mmap
import signal
import struct
import time

from worker import libc
from worker.seqlock import SequenceWords

logger = logging.getLogger(__name__)

CLOCK = time.CLOCK_BOOTTIME
# The fence fires this part of a lease after the start of the renewal that extended it. The
# lease itself expires, by the database's clock, a full lease after that statement started:
# the rest is the margin for the kill to land and for the clocks of two machines to drift.
# It is later than the supervisor's own stop (0.75 of a lease without renewal): a running
# supervisor stops its workers first, and the fence only fires when it could not.
FENCE_FRACTION = 0.85

_SEQUENCE_SIZE = 8  # a sequence word (worker.seqlock), odd while the deadline is being written
_DEADLINE = struct.Struct("=d")
_READ_TRIES = 50
_TIMER_ABSTIME = 1
_SIGEV_SIGNAL = 0


def now() -> float:
    """The fence's clock, in seconds."""
    return time.clock_gettime(CLOCK)


class FenceBoard:
    """Shared memory holding one deadline: written by the supervisor, read by its workers.

    A sequence lock (as in the heartbeat slots), not a mutex: a reader never blocks the writer,
    and a writer stopped mid-write only makes readers keep the deadline they have.
    """

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, _SEQUENCE_SIZE + _DEADLINE.size, flags=mmap.MAP_SHARED)
        self._sequence = SequenceWords(self._memory)

    def publish(self, deadline: float) -> None:
        sequence = self._sequence.get(0)
        self._sequence.set(0, sequence + 1)
        _DEADLINE.pack_into(self._memory, _SEQUENCE_SIZE, deadline)
        self._sequence.set(0, sequence + 2)

    def read(self) -> float | None:
        """The published deadline (0.0 before the first publication), or None if the writer
        stayed mid-write for every try."""
        for _ in range(_READ_TRIES):
            before = self._sequence.get(0)
            (deadline,) = _DEADLINE.unpack_from(self._memory, _SEQUENCE_SIZE)
            after = self._sequence.get(0)
            if before % 2 == 0 and before == after:
                return deadline
        return None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Sigevent(ctypes.Structure):  # struct sigevent on Linux: 64 bytes
    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("_rest", ctypes.c_byte * 48),
    ]


class KillTimer:
    """A POSIX timer of this process that delivers ``SIGKILL`` when it expires. ``SIGKILL``
    cannot be caught, blocked or delayed by the task: it ends the process wherever it is. The
    timer is not inherited by ``fork``."""

    def __init__(self) -> None:
        event = _Sigevent(sigev_signo=signal.SIGKILL, sigev_notify=_SIGEV_SIGNAL)
        self._timer = ctypes.c_void_p()
        if libc.timer_create(CLOCK, ctypes.byref(event), ctypes.byref(self._timer)):
            errno = ctypes.get_errno()
            raise OSError(errno, "timer_create: cannot arm the lease fence")

    def arm(self, deadline: float) -> None:
        """Fire at ``deadline`` (the fence's clock); a deadline already past fires at once."""
        deadline = max(deadline, 1e-9)  # an all-zero time would disarm the timer
        seconds = int(deadline)
        spec = _Itimerspec(it_value=_Timespec(seconds, int((deadline - seconds) * 1e9)))
        if libc.timer_settime(self._timer, _TIMER_ABSTIME, ctypes.byref(spec), None):
            errno = ctypes.get_errno()
            raise OSError(errno, "timer_settime: cannot move the lease fence")


class Fence:
    """The worker's side: arm the kill timer at the published deadline now, then keep it there
    from a daemon thread that reads the board every ``interval`` seconds."""

    def __init__(self, board: FenceBoard, interval: float) -> None:
        self.board = board
        self.interval = interval
        self.timer = KillTimer()
        self.armed_at: float | None = None

    def start(self) -> None:
        self._follow()
        # A bare thread: threading.Thread's bookkeeping would copy about 0.1 MiB of the
        # supervisor's heap into each worker (bench/memory.py), for nothing used here.
        _thread.start_new_thread(self._keep_following, ())

    def _keep_following(self) -> None:
        # Signals are the main thread's business (the task runs there): none lands here.
        # _signal, not signal: its wrappers would make an enum member of every signal number.
        _signal.pthread_sigmask(signal.SIG_BLOCK, _signal.valid_signals())
        while True:
            time.sleep(self.interval)
            self._follow()

    def _follow(self) -> None:
        deadline = self.board.read()
        if deadline is not None and deadline != self.armed_at:
            self.timer.arm(deadline)
            self.armed_at = deadline
