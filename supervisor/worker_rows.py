"""The workers' rows in ``task_processor.workers``, written by the supervisor from the
heartbeat slots, with its own heartbeat.

A worker used to write its row with every claim, so an idle worker had to claim to stay
fresh. The supervisor reads every slot anyway; it writes all rows in its heartbeat statement
(every few seconds, well within the grace period that ``check-health`` allows), and sooner,
at most once a second, when a row would say something new (another process, another state,
another task), so that the rows follow a worker's life without a write per claim.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from common.procfs import resident_bytes
from worker.heartbeat import Beat, WorkerState

REFRESH_AFTER = 1.0  # a changed row waits at most this long for the next heartbeat

_STATES = {
    WorkerState.BOOTING: "booting",
    WorkerState.IDLE: "idle",
    WorkerState.WAITING: "idle",
    WorkerState.BUSY: "busy",
}


class WorkerRows(NamedTuple):
    """Rows of the live workers, as the heartbeat statement takes them: times relative to the
    statement's ``now()``, since slots hold the monotonic clock."""

    slots: list[int]
    pids: list[int]
    generations: list[int]
    states: list[str]
    task_ids: list[int | None]
    deadlines_in: list[float | None]  # seconds from now to a busy worker's task deadline
    beat_ages: list[float]  # seconds since the worker was last seen alive (busy: its task began)
    rss_bytes: list[int | None]  # resident memory (not part of the key: it changes all the time)

    @property
    def key(self) -> tuple:
        """What the rows say besides the passing of time: a change is worth writing soon."""
        columns = (self.slots, self.pids, self.generations, self.states, self.task_ids)
        return tuple(zip(*columns, strict=True))

    def params(self) -> dict[str, list]:
        return {
            "worker_slots": self.slots,
            "worker_pids": self.pids,
            "worker_generations": self.generations,
            "worker_states": self.states,
            "worker_task_ids": self.task_ids,
            "worker_deadlines_in": self.deadlines_in,
            "worker_beat_ages": self.beat_ages,
            "worker_rss_bytes": self.rss_bytes,
        }


NO_ROWS = WorkerRows([], [], [], [], [], [], [], [])


def worker_rows(beats: list[Beat | None], slots: list[int], grace: float) -> WorkerRows:
    """Rows for the workers in ``slots`` whose slot holds a beat (``beats``, in order).

    An idle or booting worker that beat within ``grace`` is alive by the supervisor's own
    judgement: its row says so as of now, so that its row never ages ahead of the processor's
    (a worker beats its slot only once a second while idle). One that went silent longer
    keeps the age of its last beat; a busy one, the start of its task."""
    now = time.monotonic()
    rows = WorkerRows([], [], [], [], [], [], [], [])
    for slot, beat in zip(slots, beats, strict=True):
        if beat is None or beat.state not in _STATES:
            continue
        busy = beat.state == WorkerState.BUSY
        rows.slots.append(slot)
        rows.pids.append(beat.pid)
        rows.generations.append(beat.generation)
        rows.states.append(_STATES[beat.state])
        rows.task_ids.append(beat.task_id if busy else None)
        # A task without a time limit has no deadline (an infinite one in the slot).
        deadline = busy and math.isfinite(beat.deadline)
        rows.deadlines_in.append(beat.deadline - now if deadline else None)
        age = max(0.0, now - beat.beat)
        rows.beat_ages.append(age if busy or age > grace else 0.0)
        rows.rss_bytes.append(resident_bytes(beat.pid))
    return rows
