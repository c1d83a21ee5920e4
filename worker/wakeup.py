"""How idle workers learn that there is work: tokens in a pipe that every worker shares.

The supervisor makes the pipe before the first fork. Whoever knows of work (the supervisor's
listening connection, the processor's fallback poll, a worker whose claim came back full)
writes one token per worker it wants to wake; an idle worker waits on the read end (a
:class:`Waiter`), and only a worker that takes a token claims. A token left in the pipe because
no worker was waiting is taken by the next worker to go idle: at worst one claim that finds
nothing. No worker keeps a database connection busy listening, and none polls.

Each token is written on its own and wakes one waiting worker: the read end is in each
worker's epoll set as ``EPOLLEXCLUSIVE``, so the kernel wakes one of the workers that wait on
it (with ``select()``, each token woke every idle worker, and all but one went back to sleep
empty-handed: four needless wake-ups per task with five workers, thirty-one with thirty-two).
"""

from __future__ import annotations

import os
import select

_TOKEN = b"w"


class WakeUps:
    def __init__(self) -> None:
        # Non-blocking both ways: a full pipe already wakes everyone, and a worker that lost
        # the race for a token must not block in read().
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def ring(self, workers: int = 1) -> None:
        """Wake up to ``workers`` idle workers: one write per token, each of which wakes one."""
        for _ in range(workers):
            try:
                os.write(self.write_fd, _TOKEN)
            except BlockingIOError:
                return  # the pipe is full of tokens: every waiting worker has one already

    def ring_unless_pending(self) -> None:
        """Wake one more worker, unless a token already waits for one: a worker whose claim
        came back full calls this, so that a burst spreads over the idle workers one claim at
        a time and tokens never pile up while every worker is busy."""
        readable, _, _ = select.select([self.read_fd], [], [], 0)
        if not readable:
            self.ring()

    def take(self) -> bool:
        """Take one token; False if another worker was quicker."""
        try:
            return bool(os.read(self.read_fd, 1))
        except BlockingIOError:
            return False

    def waiter(self, signal_fd: int) -> Waiter:
        """How one worker waits: for a token, or for its signal pipe ``signal_fd``."""
        return Waiter(self.read_fd, signal_fd)


class Waiter:
    """One worker's epoll set: its signal pipe, and the token pipe shared by every worker,
    registered ``EPOLLEXCLUSIVE`` so that a token wakes one waiting worker. Made in the worker,
    after fork: an epoll set is never shared between processes."""

    def __init__(self, token_fd: int, signal_fd: int) -> None:
        self._token_fd = token_fd
        self._signal_fd = signal_fd
        self._epoll = select.epoll()
        self._epoll.register(signal_fd, select.EPOLLIN)
        self._epoll.register(token_fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)

    def wait(self, timeout: float) -> tuple[bool, bool]:
        """Wait up to ``timeout`` seconds: (a signal arrived, a token may wait)."""
        ready = {fd for fd, _ in self._epoll.poll(timeout)}
        return self._signal_fd in ready, self._token_fd in ready
