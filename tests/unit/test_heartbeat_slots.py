"""The heartbeat slots' sequence lock, against a real writer process in shared memory."""

from __future__ import annotations

import os
import random
import signal
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.heartbeat import Slots, WorkerState

integers = st.integers(min_value=0, max_value=2**62)


def _writer(slots: Slots, slot: int) -> int:
    """Fork a process that beats ``slot`` as fast as it can; every beat's fields agree with
    each other (all carry the same counter), so a torn reading shows."""
    pid = os.fork()
    if pid == 0:
        try:
            n = 0
            while True:
                n += 1
                slots.write(
                    slot,
                    pid=n,
                    generation=n,
                    state=WorkerState.BUSY,
                    task_id=n,
                    deadline=float(n),
                    tasks_done=n,
                )
        finally:
            os._exit(0)
    return pid


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[-1].split()[0] in (b"T", b"t")


def _sequence(slots: Slots, slot: int) -> int:
    """The raw sequence word: odd while the writer is between its two bumps."""
    return int.from_bytes(slots._memory[slot * 64 : slot * 64 + 8], "little")


def _consistent(beat) -> bool:
    n = beat.pid
    return (beat.generation, beat.task_id, beat.deadline, beat.tasks_done) == (n, n, n, n)


def test_a_writer_stopped_mid_write_is_never_read_half_written():
    """A worker stopped (or killed) inside a write leaves the sequence odd: the reader returns
    None and the supervisor keeps its previous reading. Stopped at random moments until that
    has been seen several times; every reading on the way must be whole."""
    slots = Slots(2)
    pid = _writer(slots, 1)
    odd_seen = even_seen = 0
    try:
        for _ in range(2000):
            time.sleep(random.uniform(0, 0.002))
            os.kill(pid, signal.SIGSTOP)
            while not _stopped(pid):
                time.sleep(0.0005)
            beat = slots.read(1)
            if _sequence(slots, 1) % 2:
                odd_seen += 1
                assert beat is None, "a half-written slot was read as a beat"
            elif beat is not None and beat.pid:
                even_seen += 1
                assert _consistent(beat), beat
            os.kill(pid, signal.SIGCONT)
            if odd_seen >= 5 and even_seen >= 5:
                break
        assert odd_seen >= 5 and even_seen >= 5, (odd_seen, even_seen)
        assert slots.read(0) is not None  # a neighbour's slot is never disturbed
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_readings_under_a_concurrent_writer_are_whole_and_never_go_back():
    """The writer rewrites the slot while the reader unpacks it many times a second: only the
    sequence check keeps those torn readings out (a reader without it sees several a second
    even on a loaded machine, hence the length of the run)."""
    slots = Slots(1)
    pid = _writer(slots, 0)
    try:
        last = 0
        readings = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            beat = slots.read(0)
            if beat is None or beat.pid == 0:
                continue
            assert _consistent(beat), beat
            assert beat.pid >= last
            last = beat.pid
            readings += 1
        assert readings > 100
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@settings(max_examples=50, deadline=None)
@given(
    slot=st.integers(min_value=0, max_value=3),
    pid=integers,
    generation=integers,
    state=st.sampled_from(list(WorkerState)),
    task_id=integers,
    deadline=st.floats(allow_nan=False),
    tasks_done=integers,
)
def test_what_a_worker_process_writes_is_what_the_supervisor_reads(
    slot, pid, generation, state, task_id, deadline, tasks_done
):
    slots = Slots(4)
    child = os.fork()
    if child == 0:
        slots.write(slot, pid, generation, state, task_id, deadline, tasks_done)
        os._exit(0)
    os.waitpid(child, 0)
    beat = slots.read(slot)
    assert beat is not None
    assert (
        beat.pid,
        beat.generation,
        beat.state,
        beat.task_id,
        beat.deadline,
        beat.tasks_done,
    ) == (pid, generation, state, task_id, deadline, tasks_done)
    assert all(slots.read(other).state == WorkerState.EMPTY for other in range(4) if other != slot)
