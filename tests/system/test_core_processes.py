"""The README's promises about real processors that only a running processor can show: lease
renewal, exact recycling, and the backoff of a timed-out task."""

from __future__ import annotations

from datetime import timedelta

import processor_tasks
import pytest
from harness import query, task_states, wait_for


def _lease_expiry(url: str, task_id: int):
    rows = query(
        url,
        "SELECT lease_expires_at FROM task_processor.tasks WHERE id = %s AND state = 'running'",
        (task_id,),
    )
    return rows[0][0] if rows and rows[0][0] else None


@pytest.mark.slow
def test_a_long_task_keeps_its_lease_while_its_processor_lives(
    database_url, start_processor, results
):
    processor = start_processor("--numthreads", "1", "--lease-seconds", "2")
    processor.wait_ready(1)
    task_id = processor_tasks.sleep_then_record.delay(args=("long", 5))
    wait_for(lambda: results("long:started"), message="the long task to start")
    first = wait_for(lambda: _lease_expiry(database_url, task_id), message="its lease")
    wait_for(
        lambda: (
            (expiry := _lease_expiry(database_url, task_id)) is not None
            and expiry > first + timedelta(seconds=1)
        ),
        timeout=10,
        message="the lease to be renewed",
    )
    wait_for(lambda: results("long"), timeout=30, message="the long task to end")
    runs = query(
        database_url,
        "SELECT attempt, result FROM task_processor.runs WHERE task_id = %s",
        (task_id,),
    )
    assert runs == [(1, "success")]


def test_a_worker_is_recycled_after_exactly_max_tasks(database_url, start_processor):
    processor = start_processor("--numthreads", "1", "--max-tasks-per-worker", "3")
    processor.wait_ready(1)
    processor_tasks.noop.delay_many([{} for _ in range(7)])
    wait_for(lambda: task_states(database_url).get("succeeded") == 7)
    # Every task counts, the processor's own start-up clean-up too.
    per_worker = [
        count
        for (count,) in query(
            database_url,
            "SELECT count(*) FROM task_processor.runs GROUP BY worker ORDER BY min(id)",
        )
    ]
    assert len(per_worker) >= 3
    assert per_worker[:-1] == [3] * (len(per_worker) - 1) and 1 <= per_worker[-1] <= 3, per_worker


def test_a_timed_out_task_backs_off_before_its_retry(database_url, start_processor):
    """The retry of a task killed for its timeout waits the backoff (0.5 to 1 s for the
    first retry) although an idle worker is there to take it at once."""
    processor = start_processor("--numthreads", "2")
    processor.wait_ready(2)
    task_id = processor_tasks.hang_in_python.delay()  # timeout 1 s, 2 attempts
    wait_for(
        lambda: (
            query(database_url, "SELECT state FROM task_processor.tasks WHERE id = %s", (task_id,))[
                0
            ][0]
            == "dead"
        ),
        timeout=30,
        message="the task dead",
    )
    runs = query(
        database_url,
        "SELECT result, started_at, finished_at FROM task_processor.runs "
        "WHERE task_id = %s ORDER BY id",
        (task_id,),
    )
    assert [result for result, _, _ in runs] == ["timeout", "timeout"]
    gap = (runs[1][1] - runs[0][2]).total_seconds()
    assert gap >= 0.45, f"retried {gap:.3f} s after the timeout"
