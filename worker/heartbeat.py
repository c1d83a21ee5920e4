"""Worker heartbeats in shared memory: one fixed-size slot per worker.

The supervisor maps an anonymous shared region before the first fork; each worker writes only
its own slot, the supervisor only reads (and clears a slot before it starts a worker in it).
Consistency comes from a sequence lock, not a mutex: a worker killed with SIGKILL while
holding a lock would hold it forever, while a half-written slot only makes the reader keep
the previous consistent reading. Times are ``time.monotonic()``, which every process on the
host shares.
"""

from __future__ import annotations

import enum
import mmap
import struct
import time
from typing import NamedTuple

from worker.seqlock import SequenceWords

_FIELDS = struct.Struct("=qqqdqdq")  # pid, generation, state, beat, task_id, deadline, done
SLOT_SIZE = 64
_READ_TRIES = 50


class WorkerState(enum.IntEnum):
    EMPTY = 0
    BOOTING = 1
    IDLE = 2  # not waiting for a token: between batches, or while the database is away
    BUSY = 3
    WAITING = 4  # its last claim found nothing: it waits to be woken


IDLE_STATES = (WorkerState.IDLE, WorkerState.WAITING)


class Beat(NamedTuple):
    """One consistent reading of a slot."""

    pid: int
    generation: int
    state: WorkerState
    beat: float
    task_id: int
    deadline: float
    tasks_done: int


class Slots:
    """The shared heartbeat region for up to ``capacity`` workers."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._memory = mmap.mmap(-1, SLOT_SIZE * capacity, flags=mmap.MAP_SHARED)
        self._sequence = SequenceWords(self._memory)

    def _offset(self, slot: int) -> int:
        if not 0 <= slot < self.capacity:
            raise IndexError(f"slot {slot} outside 0..{self.capacity - 1}")
        return slot * SLOT_SIZE

    def write(
        self,
        slot: int,
        pid: int,
        generation: int,
        state: WorkerState,
        task_id: int = 0,
        deadline: float = 0.0,
        tasks_done: int = 0,
    ) -> None:
        """Publish a beat: bump the sequence to odd, write, bump it back to even."""
        offset = self._offset(slot)
        sequence = self._sequence.get(offset)
        self._sequence.set(offset, sequence + 1)
        _FIELDS.pack_into(
            self._memory,
            offset + 8,
            pid,
            generation,
            int(state),
            time.monotonic(),
            task_id,
            deadline,
            tasks_done,
        )
        self._sequence.set(offset, sequence + 2)

    def clear(self, slot: int) -> None:
        """Reset a slot to EMPTY with an even sequence (the supervisor, before a new worker)."""
        offset = self._offset(slot)
        self._memory[offset : offset + SLOT_SIZE] = bytes(SLOT_SIZE)

    def read(self, slot: int) -> Beat | None:
        """A consistent reading, or None if the writer stayed mid-write for every try (it was
        stopped or killed while writing; the caller keeps its previous reading)."""
        offset = self._offset(slot)
        for _ in range(_READ_TRIES):
            before = self._sequence.get(offset)
            if before % 2 == 0:
                fields = _FIELDS.unpack_from(self._memory, offset + 8)
                after = self._sequence.get(offset)
                if before == after:
                    pid, generation, state, beat, task_id, deadline, done = fields
                    return Beat(pid, generation, WorkerState(state), beat, task_id, deadline, done)
        return None

    def any_idle(self, besides: int) -> bool:
        """Is any worker other than slot ``besides`` idle (waiting for work)?"""
        for slot in range(self.capacity):
            if slot != besides:
                beat = self.read(slot)
                if beat is not None and beat.state in IDLE_STATES:
                    return True
        return False
