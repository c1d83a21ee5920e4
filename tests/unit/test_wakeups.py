"""Wake-up tokens between real processes: a token wakes one waiting worker, not every one."""

from __future__ import annotations

import os
import select
import time

from worker.wakeup import WakeUps

WORKERS = 4


def waiting_workers(wakeups: WakeUps, report_fd: int) -> list[int]:
    """Fork workers that wait as an idle worker does, and write a byte to ``report_fd`` each
    time one wakes: ``t`` if it took a token, ``-`` if it woke for nothing."""
    pids = []
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            signal_read, _ = os.pipe()
            waiter = wakeups.waiter(signal_read)
            os.write(report_fd, b"r")  # ready: it waits from now on
            while True:
                _, token = waiter.wait(10)
                if token:
                    os.write(report_fd, b"t" if wakeups.take() else b"-")
        pids.append(pid)
    return pids


def reports(fd: int, seconds: float) -> bytes:
    received = b""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            received += os.read(fd, 64)
    return received


def test_each_token_wakes_one_waiting_worker_and_none_wakes_for_nothing():
    wakeups = WakeUps()
    report_read, report_write = os.pipe()
    pids = waiting_workers(wakeups, report_write)
    try:
        assert reports(report_read, 1.0).count(b"r") == WORKERS
        time.sleep(0.1)  # each is in its wait now

        wakeups.ring(1)
        assert reports(report_read, 0.5) == b"t"  # one woke, and took it

        wakeups.ring(3)
        woken = reports(report_read, 0.5)
        # Three taken; a worker that took one and waits again may see the next token before
        # another takes it: at most one wakes for nothing (with select(), 3 x 3 would have)
        assert woken.count(b"t") == 3 and woken.count(b"-") <= 1, woken
    finally:
        for pid in pids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
