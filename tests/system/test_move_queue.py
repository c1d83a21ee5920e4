"""Moving the queue to a database of its own: a processor started on the new queue warns
about the tasks left in the old one, and `task-processor move-queue` moves them, after which
they run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import processor_tasks
import pytest
from databases import create_database, drop_database, url_for
from harness import REPO, query, task_states, wait_for


@pytest.fixture
def new_queue_url(template_database: str) -> Iterator[str]:
    name = create_database(template_database)
    try:
        yield url_for(name)
    finally:
        drop_database(name)


def move_queue(old: str, new: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "admin.cli", "move-queue"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": old, "TASK_PROCESSOR_DATABASE_URL": new},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_tasks_left_in_the_old_queue_are_announced_then_moved_and_run(
    database_url, new_queue_url, start_processor, results, conn
):
    old = database_url
    processor_tasks.record.delay_many([{"args": (f"moved-{i}",)} for i in range(4)])
    with conn.cursor() as cursor:  # a task whose processor died with it, its lease expired
        cursor.execute("""
            INSERT INTO task_processor.tasks (identifier, args, state, attempts, lease_owner,
                                              lease_expires_at)
            VALUES ('processor_tasks.record', '["orphan"]', 'running', 1, 'gone/0.1',
                    now() - interval '1 minute')""")

    processor = start_processor(
        "--numthreads", "1", env={"TASK_PROCESSOR_DATABASE_URL": new_queue_url}
    )
    wait_for(lambda: "ready" in processor.log_text(), message="the processor ready")
    log = processor.log_text()
    assert "4 tasks wait (and 1 run) in the task_processor schema of database" in log
    assert "task-processor move-queue" in log
    assert not results("moved-0")  # nothing runs them where they are

    done = move_queue(old, new_queue_url)
    assert done.returncode == 0, done.stderr
    assert "moved 5 waiting tasks" in done.stdout
    wait_for(
        lambda: len(query(old, "SELECT 1 FROM test_results")) == 5,
        message="every moved task run from the new queue",
    )
    assert task_states(old) == {}
    assert task_states(new_queue_url) == {"succeeded": 5}
    assert query(
        new_queue_url, "SELECT attempts FROM task_processor.tasks WHERE args = '[\"orphan\"]'"
    ) == [(2,)]


def test_move_queue_needs_two_different_databases(database_url):
    done = move_queue(database_url, database_url)
    assert done.returncode == 1
    assert "set both, to different databases" in done.stderr
