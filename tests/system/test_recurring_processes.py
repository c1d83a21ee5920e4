"""Recurring tasks with real processors on one database: one run per period across several
processors, a processor killed during a run, a run that keeps failing."""

from __future__ import annotations

import itertools
import os
import re
import signal
from datetime import UTC, datetime, timedelta

import recurring_tasks
from harness import query, reap_orphans, wait_for

IDENTIFIER = "recurring_tasks.tick"
TASKS = ("recurring_tasks",)
OPTIONS = ("--numthreads", "2", "--sleepintervalms", "500", "--graceperiodms", "10000")


def tick_environment(**settings: object) -> dict[str, str]:
    """A period of 2 s on a grid that starts on a whole second."""
    origin = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    environment = {
        "RECURRING_TEST_PERIOD_SECONDS": "2",
        "RECURRING_TEST_ORIGIN": origin.isoformat(),
    }
    environment.update(
        {f"RECURRING_TEST_{key.upper()}": str(value) for key, value in settings.items()}
    )
    return environment


def slots(url: str) -> list[tuple]:
    """(slot, task id, state, [(attempt, result), ...]) of every run, by slot."""
    return query(
        url,
        """
        SELECT t.recurring_slot, t.id, t.state,
               coalesce(array_agg(array[r.attempt::text, r.result] ORDER BY r.id)
                        FILTER (WHERE r.id IS NOT NULL), '{}')
        FROM task_processor.tasks AS t
        LEFT JOIN task_processor.runs AS r ON r.task_id = t.id
        WHERE t.recurring_identifier = %s
        GROUP BY t.id ORDER BY t.recurring_slot
    """,
        (IDENTIFIER,),
    )


def succeeded_slots(url: str) -> list[tuple]:
    return [row for row in slots(url) if row[2] == "succeeded"]


def assert_one_task_per_consecutive_slot(rows: list[tuple]) -> None:
    period = timedelta(seconds=2)
    times = [slot for slot, *_ in rows]
    assert all(later - earlier == period for earlier, later in itertools.pairwise(times)), times


def test_three_processors_run_each_period_exactly_once(database_url, start_processor):
    environment = tick_environment()
    processors = [start_processor(*OPTIONS, tasks=TASKS, env=environment) for _ in range(3)]
    for processor in processors:
        processor.wait_ready(2)
    wait_for(
        lambda: len(succeeded_slots(database_url)) >= 5, timeout=40, message="five periods run"
    )
    rows = slots(database_url)
    assert_one_task_per_consecutive_slot(rows)
    finished = [row for row in rows if row[2] == "succeeded"]
    assert all(runs == [["1", "success"]] for *_, runs in finished), finished
    known = query(
        database_url,
        "SELECT count(*) FROM task_processor.processor_recurring_tasks WHERE identifier = %s",
        (IDENTIFIER,),
    )
    assert known == [(3,)]
    logs = "".join(processor.log_text() for processor in processors)
    queued = re.findall(rf"recurring task {re.escape(IDENTIFIER)}: queued task", logs)
    assert len(queued) == len(rows)
    assert "already had a task" not in logs


def test_a_processor_killed_during_a_run_loses_nothing(database_url, start_processor):
    environment = tick_environment(sleep_seconds=1.5)
    processors = [start_processor(*OPTIONS, tasks=TASKS, env=environment) for _ in range(2)]
    for processor in processors:
        processor.wait_ready(2)

    def running_run():
        return query(
            database_url,
            """
            SELECT t.id, t.recurring_slot, p.pid FROM task_processor.tasks AS t
            JOIN task_processor.processors AS p
              ON p.id = split_part(t.lease_owner, '/', 1)
            WHERE t.recurring_identifier = %s AND t.state = 'running'
        """,
            (IDENTIFIER,),
        )

    ((task_id, killed_slot, pid), *_) = wait_for(
        running_run, timeout=30, message="a recurring run in progress"
    )
    (victim,) = [processor for processor in processors if processor.pid == pid]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.process.wait(10)
    reap_orphans()

    def retried_and_two_more_periods():
        rows = [row for row in slots(database_url) if row[0] >= killed_slot]
        done = [row for row in rows if row[2] == "succeeded"]
        return rows[0][2] == "succeeded" and len(done) >= 3 and rows

    rows = wait_for(
        retried_and_two_more_periods,
        timeout=60,
        message="the killed run retried and two more periods run",
    )
    assert rows[0][1] == task_id
    assert rows[0][3] == [["1", "worker_lost"], ["2", "success"]]
    assert_one_task_per_consecutive_slot(rows)
    assert all(runs == [["1", "success"]] for _, _, state, runs in rows[1:] if state == "succeeded")


def test_a_run_that_keeps_failing_is_visible_and_the_schedule_goes_on(
    database_url, start_processor
):
    processor = start_processor(*OPTIONS, tasks=TASKS, env=tick_environment(fail="true"))
    processor.wait_ready(2)
    wait_for(
        lambda: any(state == "dead" for _, _, state, _ in slots(database_url)),
        timeout=40,
        message="a run out of attempts",
    )
    wait_for(lambda: len(slots(database_url)) >= 3, timeout=20, message="later periods")
    first = slots(database_url)[0]
    assert first[2] == "dead"
    assert first[3] == [["1", "failure"], ["2", "failure"], ["3", "failure"]]
    ((error,),) = query(
        database_url, "SELECT last_error FROM task_processor.tasks WHERE id = %s", (first[1],)
    )
    assert recurring_tasks.FAILURE_MESSAGE in error
    assert query(
        database_url,
        "SELECT count(*) FROM task_processor.recurring_tasks WHERE identifier = %s",
        (IDENTIFIER,),
    ) == [(1,)]
