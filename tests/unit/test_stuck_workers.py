"""The supervisor's judgement of a stuck worker, for every timing: no processes needed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.arbiter import stuck
from worker.heartbeat import Beat, WorkerState

graces = st.floats(min_value=0.1, max_value=86_400.0)
seconds = st.floats(min_value=0.0, max_value=10 * 86_400.0)
quiet_states = st.sampled_from([WorkerState.IDLE, WorkerState.BOOTING])


def _beat(state: WorkerState, at: float, deadline: float = 0.0) -> Beat:
    return Beat(
        pid=1,
        generation=1,
        state=state,
        beat=at,
        task_id=7 if deadline else 0,
        deadline=deadline,
        tasks_done=0,
    )


@given(state=quiet_states, grace=graces, silence=seconds)
def test_a_quiet_worker_is_stuck_exactly_when_silent_past_the_grace_period(state, grace, silence):
    verdict = stuck(_beat(state, at=1000.0), started=0.0, now=1000.0 + silence, grace=grace, slot=3)
    assert (verdict is not None) == (1000.0 + silence - 1000.0 > grace)
    if verdict is not None:
        reason, result = verdict
        assert result == "worker_lost"
        assert f"worker 3 was {state.name.lower()} and silent" in reason


@given(grace=graces, silence=seconds)
def test_a_worker_that_never_beat_counts_from_its_start(grace, silence):
    verdict = stuck(None, started=50.0, now=50.0 + silence, grace=grace, slot=0)
    assert (verdict is not None) == (50.0 + silence - 50.0 > grace)
    if verdict is not None:
        assert "was booting and silent" in verdict[0]


@given(grace=graces, timeout=st.floats(min_value=0.001, max_value=86_400.0), elapsed=seconds)
def test_a_busy_worker_is_stuck_exactly_when_past_its_deadline(grace, timeout, elapsed):
    """However long it has been silent: a busy worker beats only between tasks."""
    beat = _beat(WorkerState.BUSY, at=100.0, deadline=100.0 + timeout)
    verdict = stuck(beat, started=0.0, now=100.0 + elapsed, grace=grace, slot=1)
    assert (verdict is not None) == (100.0 + elapsed > 100.0 + timeout)
    if verdict is not None:
        reason, result = verdict
        assert result == "timeout" and reason.startswith("task 7 exceeded its timeout")


def test_the_grace_period_is_what_it_says():
    """The boundary, plainly: a hundredth of a second past the grace period is too late."""
    idle = _beat(WorkerState.IDLE, at=0.0)
    assert stuck(idle, started=0.0, now=2.0, grace=2.0, slot=0) is None
    assert stuck(idle, started=0.0, now=2.01, grace=2.0, slot=0) is not None
