"""A rolling deploy: two releases of one task module run side by side on one database. The
newer one (written for Flagsmith's task processor, unchanged) adds a task and a recurring task;
the older processor leaves them waiting, visibly, instead of failing them, and the newer
processor runs them once it is up. Nothing fails, everything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import REPO, SUPPORT, query, wait_for

RELEASES = SUPPORT / "releases"
OPTIONS = ("--numthreads", "2", "--sleepintervalms", "500")
TASKS = ("release_tasks",)


def release(name: str) -> dict[str, str]:
    """The environment of a process of one release: its module directory comes first."""
    return {"PYTHONPATH": os.pathsep.join([str(RELEASES / name), str(SUPPORT), str(REPO)])}


def enqueue_as_new_release(database_url: str, count: int) -> None:
    """What the newer release's web processes do: ``.delay()`` both tasks."""
    code = (
        "import release_tasks as r\n"
        f"for i in range({count}):\n"
        "    r.shared.delay(args=(f'shared-{i}',))\n"
        "    r.add_something.delay(kwargs={'key': f'added-{i}'})\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=REPO,
        timeout=60,
        env={
            **os.environ,
            **release("new"),
            "DATABASE_URL": database_url,
            "TASK_RUN_METHOD": "TASK_PROCESSOR",
        },
    )


def status(database_url: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "admin.cli", "status", "--json"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "DATABASE_URL": database_url},
    )
    return json.loads(done.stdout)


def keys(database_url: str, prefix: str) -> dict[str, int]:
    return dict(
        query(
            database_url, "SELECT key, pid FROM test_results WHERE starts_with(key, %s)", (prefix,)
        )
    )


def runs_by_identifier(database_url: str) -> dict[str, list[tuple[str, str]]]:
    """identifier -> [(result, worker), ...] of every attempt of the release's tasks."""
    rows = query(
        database_url,
        """
        SELECT t.identifier, r.result, r.worker FROM task_processor.runs AS r
        JOIN task_processor.tasks AS t ON t.id = r.task_id
        WHERE starts_with(t.identifier, 'release_tasks.')""",
    )
    found: dict[str, list[tuple[str, str]]] = {}
    for identifier, result, worker in rows:
        found.setdefault(identifier, []).append((result, worker))
    return found


def processor_id(database_url: str, pid: int) -> str:
    return query(database_url, "SELECT id FROM task_processor.processors WHERE pid = %s", (pid,))[
        0
    ][0]


def test_old_and_new_processors_each_run_only_what_they_know(
    database_url, start_processor, results
):
    old = start_processor(*OPTIONS, tasks=TASKS, env=release("old"))
    old.wait_ready(2)
    enqueue_as_new_release(database_url, 10)

    wait_for(
        lambda: len(keys(database_url, "shared-")) == 10,
        timeout=60,
        message="the old processor runs the tasks it knows",
    )
    added = query(
        database_url,
        "SELECT state, attempts FROM task_processor.tasks WHERE identifier = 'release_tasks.added'",
    )
    assert added == [("waiting", 0)] * 10
    assert status(database_url)["waiting_unrunnable"] == {"release_tasks.added": 10}

    new = start_processor(*OPTIONS, tasks=TASKS, env=release("new"))
    new.wait_ready(2)
    wait_for(
        lambda: len(keys(database_url, "added-")) == 10,
        timeout=60,
        message="the new processor runs the added tasks",
    )
    wait_for(
        lambda: len(runs_by_identifier(database_url).get("release_tasks.tick", [])) >= 3,
        timeout=60,
        message="three runs of the new recurring task",
    )

    runs = runs_by_identifier(database_url)
    new_id = processor_id(database_url, new.pid)
    assert {result for attempts in runs.values() for result, _ in attempts} == {"success"}
    for identifier in ("release_tasks.added", "release_tasks.tick"):
        assert all(worker.startswith(new_id + "/") for _, worker in runs[identifier])
    assert query(
        database_url, "SELECT count(*) FROM task_processor.tasks WHERE state = 'dead'"
    ) == [(0,)]
    assert status(database_url)["waiting_unrunnable"] == {}
    assert old.process.poll() is None and new.process.poll() is None
