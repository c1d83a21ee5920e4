"""How idle workers learn that there is work: tokens in a pipe that every worker shares.

The supervisor makes the pipe before the first fork. Whoever knows of work (the supervisor's
listening connection, the processor's fallback poll, a worker whose claim came back full)
writes one token per worker it wants to wake; an idle worker waits in ``select()`` on the
read end, and only a worker that takes a token claims. A token left in the pipe because no
worker was waiting is taken by the next worker to go idle: at worst one claim that finds
nothing. No worker keeps a database connection busy listening, and none polls.
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
        """Wake up to ``workers`` idle workers."""
        if workers > 0:
            try:
                os.write(self.write_fd, _TOKEN * workers)
            except BlockingIOError:
                pass

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

    def fileno(self) -> int:
        return self.read_fd
