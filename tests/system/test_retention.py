"""The retention clean-up against the real database: what goes, what stays, in small batches
that skip rows other transactions hold."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import ClassVar

import psycopg2
import psycopg2.extensions
from databases import fetch_all
from harness import processor_settings, wait_for

from builtin_tasks import BUILTIN_TASK_MODULES, retention
from common import recurring, registry, settings


def add_tasks(conn, count: int, state: str, finished_days_ago: float | None) -> list[int]:
    """Tasks in ``state``, finished that many days ago (None: not finished), one run each."""
    rows = fetch_all(
        conn,
        """
        WITH added AS (
            INSERT INTO task_processor.tasks (identifier, state, attempts, finished_at,
                                              created_at)
            SELECT 'app.job', %(state)s, 1, now() - %(days)s * interval '1 day',
                   now() - interval '400 days'
            FROM generate_series(1, %(count)s)
            RETURNING id
        ), runs AS (
            INSERT INTO task_processor.runs (task_id, attempt, worker, started_at, result)
            SELECT id, 1, 'p/0.1', now(), 'success' FROM added
        )
        SELECT id FROM added
    """,
        {"state": state, "days": finished_days_ago, "count": count},
    )
    return [task_id for (task_id,) in rows]


def add_processor(conn, processor_id: str, state: str, days_ago: float) -> None:
    """A processor row (stopped, or silent, since ``days_ago``), one worker row, and one
    recurring identifier it knew."""
    fetch_all(
        conn,
        """
        WITH processor AS (
            INSERT INTO task_processor.processors
                (id, host, pid, started_at, last_beat_at, num_workers, grace_period_ms, state,
                 stopped_at)
            VALUES (%(id)s, 'host', 1, now() - interval '400 days',
                    now() - %(days)s * interval '1 day', 1, 20000, %(state)s,
                    CASE WHEN %(state)s = 'stopped' THEN now() - %(days)s * interval '1 day' END)
            RETURNING id
        ), known AS (
            INSERT INTO task_processor.processor_recurring_tasks (identifier, processor_id)
            SELECT 'app.hourly', id FROM processor
        )
        INSERT INTO task_processor.workers
            (processor_id, slot, pid, generation, state, last_beat_at)
        VALUES (%(id)s, 0, 2, 1, 'idle', now() - %(days)s * interval '1 day')
        RETURNING 1
    """,
        {"id": processor_id, "state": state, "days": days_ago},
    )


def remaining(conn, table: str, column: str = "id") -> set:
    return {row[0] for row in fetch_all(conn, f"SELECT {column} FROM task_processor.{table}")}


def test_the_clean_up_is_a_builtin_hourly_recurring_task():
    assert "builtin_tasks.retention" in BUILTIN_TASK_MODULES
    (definition,) = [
        d for d in recurring.definitions() if d.identifier == "retention.clean_up_old_tasks"
    ]
    assert definition.run_every == timedelta(hours=1)
    assert registry.get(definition.identifier) is retention.clean_up_old_tasks


def test_old_finished_tasks_go_in_batches_and_the_rest_stays(conn):
    old_succeeded = add_tasks(conn, 7, "succeeded", 31)
    recent_succeeded = add_tasks(conn, 2, "succeeded", 29)
    dead_kept = add_tasks(conn, 2, "dead", 31)
    old_dead = add_tasks(conn, 4, "dead", 91)
    old_cancelled = add_tasks(conn, 2, "cancelled", 31)
    recent_cancelled = add_tasks(conn, 1, "cancelled", 29)
    waiting = add_tasks(conn, 1, "waiting", None)
    running = add_tasks(conn, 1, "running", None)

    counts = retention.clean_up(conn, 30, 90, batch_size=3)

    assert counts["succeeded tasks"] == 7 and counts["dead tasks"] == 4
    assert counts["cancelled tasks"] == 2
    kept = set(recent_succeeded + dead_kept + recent_cancelled + waiting + running)
    assert remaining(conn, "tasks") == kept
    assert remaining(conn, "runs", "task_id") == kept  # the runs went with their tasks
    assert set(old_succeeded + old_dead + old_cancelled).isdisjoint(
        remaining(conn, "runs", "task_id")
    )


def test_runs_go_with_their_tasks_whatever_deletes_them(conn):
    """No foreign key ties a run to its task (migration 0012): a trigger deletes the runs of
    every task a statement deleted, and TRUNCATE of the tasks empties the runs."""
    gone, kept = add_tasks(conn, 3, "succeeded", 1), add_tasks(conn, 2, "succeeded", 1)
    fetch_all(
        conn,
        "DELETE FROM task_processor.tasks WHERE id = ANY(%s) RETURNING id",
        (gone,),
    )
    assert remaining(conn, "runs", "task_id") == set(kept)
    with conn.cursor() as cursor:
        cursor.execute("TRUNCATE task_processor.tasks")
    assert remaining(conn, "runs") == set()


class _TimedCursor(psycopg2.extensions.cursor):
    """Records how long each statement took."""

    durations: ClassVar[list[float]] = []

    def execute(self, query, vars=None):
        started = time.monotonic()
        try:
            return super().execute(query, vars)
        finally:
            self.durations.append(time.monotonic() - started)


def test_the_clean_up_pauses_after_each_full_batch_for_three_times_its_length(database_url):
    """It yields to the queue: a batch that took 50 ms is followed by 150 ms of nothing."""
    connection = psycopg2.connect(database_url, cursor_factory=_TimedCursor)
    connection.autocommit = True
    try:
        add_tasks(connection, 4, "succeeded", 31)
        _TimedCursor.durations = []
        slow_batch = (
            "DELETE FROM task_processor.tasks WHERE id IN (SELECT id FROM "
            "task_processor.tasks LIMIT %(batch_size)s) AND pg_sleep(0.05) IS NOT NULL"
        )
        started = time.monotonic()
        deleted = retention.delete_in_batches(connection, slow_batch, {}, batch_size=1)
        elapsed = time.monotonic() - started
    finally:
        connection.close()
    batches = _TimedCursor.durations
    # Four full batches, each followed by its pause, and a fifth that finds nothing.
    assert deleted == 4 and len(batches) == 5
    assert elapsed >= sum(batches) + retention.PAUSE_FACTOR * sum(batches[:4]) * 0.95


def test_old_processor_rows_go_with_their_workers_and_what_they_knew(conn):
    add_processor(conn, "stopped-long-ago", "stopped", 31)
    add_processor(conn, "killed-long-ago", "running", 31)  # never stopped: silent
    add_processor(conn, "stopped-lately", "stopped", 2)
    add_processor(conn, "alive", "running", 0)

    counts = retention.clean_up(conn, 30, 90, batch_size=1)

    assert counts["processors"] == 2 and counts["workers"] == 2
    assert remaining(conn, "processors") == {"stopped-lately", "alive"}
    assert remaining(conn, "workers", "processor_id") == {"stopped-lately", "alive"}
    assert remaining(conn, "processor_recurring_tasks", "processor_id") == {
        "stopped-lately",
        "alive",
    }


def test_rows_held_by_another_transaction_are_skipped_not_waited_for(conn, database_url):
    held, free = add_tasks(conn, 1, "succeeded", 31), add_tasks(conn, 2, "succeeded", 31)
    holder = psycopg2.connect(database_url)
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT id FROM task_processor.tasks WHERE id = %s FOR UPDATE", held)
        fetch_all(conn, "SELECT set_config('lock_timeout', '2s', false)")
        counts = retention.clean_up(conn, 30, 90)
    finally:
        holder.close()
    assert counts["succeeded tasks"] == 2
    assert remaining(conn, "tasks") == set(held)
    assert set(free).isdisjoint(remaining(conn, "tasks"))


def test_the_task_uses_the_processor_s_periods(conn, database_url, monkeypatch):
    two_days = add_tasks(conn, 2, "succeeded", 2)
    dead_two_days = add_tasks(conn, 1, "dead", 2)
    dead_four_days = add_tasks(conn, 1, "dead", 4)
    monkeypatch.setattr(settings, "_current", None)  # undone after the test
    settings.enter_processor(
        processor_settings(database_url, retention_days=1, dead_retention_days=3)
    )
    retention.clean_up_old_tasks()  # as a worker runs it: its own connection
    assert remaining(conn, "tasks") == set(dead_two_days)
    assert set(two_days + dead_four_days).isdisjoint(remaining(conn, "tasks"))


def test_a_processor_runs_the_clean_up_with_its_options(conn, start_processor):
    old = add_tasks(conn, 3, "succeeded", 3)
    old_dead = add_tasks(conn, 1, "dead", 3)
    processor = start_processor(
        "--numthreads", "1", "--retention-days", "2", "--dead-retention-days", "5", tasks=()
    )
    wait_for(
        lambda: fetch_all(
            conn,
            """
        SELECT state FROM task_processor.tasks
        WHERE recurring_identifier = 'retention.clean_up_old_tasks' AND state = 'succeeded'
    """,
        ),
        timeout=30,
        message="the first clean-up run, at the first start",
    )
    left = remaining(conn, "tasks")
    assert set(old).isdisjoint(left)
    assert set(old_dead) <= left
    assert "3 succeeded tasks, 0 dead tasks" in processor.log_text()
