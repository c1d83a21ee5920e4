"""The processor's own metrics: counted by each process in plain Python, published in shared
memory, rendered by the metrics server (supervisor/metrics_server.py).

A worker counts each attempt in a dict of its own (no lock, no system call, no statement) and
publishes the whole of it in its page of a :class:`MetricsBoard` when it records a batch, so the
cost per task is a few dict and list operations. The board is an anonymous shared region mapped
by the supervisor before the first fork, one page per worker slot and one for the supervisor;
only the owner of a page writes it. A page holds two buffers, each under a sequence lock, and a
writer always overwrites the one that is not the newest complete copy: a worker killed in the
middle of a write leaves the previous copy intact, and the next worker of the same slot
continues counting from it, so the counters of a slot never go back across generations.
"""

from __future__ import annotations

import bisect
import logging
import marshal
import math
import mmap
import struct
import time
from typing import Any

from worker.runner import ClaimedTask

logger = logging.getLogger(__name__)

# prometheus_client's default buckets: the reference's duration histogram uses them.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    math.inf,
)
# From due to started: milliseconds when the processors keep up, hours behind a backlog.
START_DELAY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    math.inf,
)

PAGE_SIZE = 128 * 1024  # two buffers; only the pages a process touches take memory
_HEADER = struct.Struct("=QI")  # sequence (odd while writing), length of the data
_READ_TRIES = 50

# A histogram's series: a count per bucket, then the sum of the observed values.
Series = list[Any]
Durations = dict[tuple[str, str, str], Series]  # (identifier, task type, result) -> series
StartDelays = dict[tuple[str, str], Series]  # (identifier, task type) -> series


class MetricsBoard:
    """Shared pages of published metrics: ``pages`` of them, each written by one process."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self._half = PAGE_SIZE // 2
        self._memory = mmap.mmap(-1, PAGE_SIZE * pages, flags=mmap.MAP_SHARED)

    def write(self, page: int, value: Any) -> bool:
        """Publish ``value`` (marshal-able) in ``page``; False if it does not fit."""
        data = marshal.dumps(value)
        if _HEADER.size + len(data) > self._half:
            return False
        buffers = self._buffers(page)
        sequences = [_HEADER.unpack_from(self._memory, b)[0] for b in buffers]
        newest = self._newest(page)
        target = buffers[1] if newest is not None and newest[1] == buffers[0] else buffers[0]
        odd = max(sequences) + (1 if max(sequences) % 2 == 0 else 2)
        _HEADER.pack_into(self._memory, target, odd, len(data))
        start = target + _HEADER.size
        self._memory[start : start + len(data)] = data
        _HEADER.pack_into(self._memory, target, odd + 1, len(data))
        return True

    def read(self, page: int) -> Any:
        """The newest complete value of ``page``, or None if it was never written."""
        newest = self._newest(page)
        if newest is None:
            return None
        try:
            return marshal.loads(newest[0])
        except (EOFError, ValueError, TypeError):
            return None

    def _buffers(self, page: int) -> tuple[int, int]:
        if not 0 <= page < self.pages:
            raise IndexError(f"metrics page {page} outside 0..{self.pages - 1}")
        base = page * PAGE_SIZE
        return base, base + self._half

    def _newest(self, page: int) -> tuple[bytes, int] | None:
        """(data, buffer offset) of the complete copy with the highest sequence."""
        best: tuple[int, bytes, int] | None = None
        for offset in self._buffers(page):
            for _ in range(_READ_TRIES):
                before, length = _HEADER.unpack_from(self._memory, offset)
                if before == 0 or before % 2:
                    break  # never written, or a writer died in it (or is in it: try later)
                start = offset + _HEADER.size
                data = bytes(self._memory[start : start + min(length, self._half)])
                if _HEADER.unpack_from(self._memory, offset)[0] == before:
                    if best is None or before > best[0]:
                        best = (before, data, offset)
                    break
        return None if best is None else (best[1], best[2])


class AttemptMetrics:
    """One worker's counts of its attempts: the duration of each, by identifier, task type and
    result (whose counts are also the finished attempts), and the delay from due to start."""

    def __init__(self, board: MetricsBoard, page: int) -> None:
        self.board = board
        self.page = page
        previous = board.read(page)  # the slot's earlier workers counted these
        self.durations: Durations = previous[0] if previous else {}
        self.start_delays: StartDelays = previous[1] if previous else {}
        self.claimed_at = time.monotonic()
        self._changed = False
        self._too_large = False

    def claimed(self) -> None:
        """A batch was claimed now: its tasks have waited since, on top of ``task.waited``."""
        self.claimed_at = time.monotonic()

    def observe(self, task: ClaimedTask, result: str, started: float, finished: float) -> None:
        task_type = "recurring" if task.recurring else "standard"
        _observe(
            self.durations,
            (task.identifier, task_type, result),
            DURATION_BUCKETS,
            finished - started,
        )
        _observe(
            self.start_delays,
            (task.identifier, task_type),
            START_DELAY_BUCKETS,
            max(0.0, task.waited + started - self.claimed_at),
        )
        self._changed = True

    def publish(self) -> None:
        """Make what was counted so far visible to the metrics server."""
        if not self._changed:
            return
        self._changed = False
        if (
            not self.board.write(self.page, (self.durations, self.start_delays))
            and not self._too_large
        ):
            self._too_large = True  # thousands of task identifiers: say it once
            logger.error(
                "the attempt metrics of %d series do not fit in %d bytes; this "
                "worker's are no longer updated",
                len(self.durations),
                PAGE_SIZE // 2,
            )


def _observe(
    series_of: dict[Any, Series], key: Any, buckets: tuple[float, ...], value: float
) -> None:
    series = series_of.get(key)
    if series is None:
        series = series_of[key] = [0] * len(buckets) + [0.0]
    series[bisect.bisect_left(buckets, value)] += 1
    series[-1] += value
