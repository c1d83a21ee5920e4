"""The ``task-processor`` admin command, run as a real subprocess against the test database."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from commands import ADMIN_COMMAND, admin
from databases import fetch_all, insert_task

from common import migrations

LATEST = migrations.available()[-1]


def test_migrate_applies_then_reports_the_schema_current(empty_database_url):
    first = admin("migrate")
    second = admin("migrate")

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"applied {m.version:04d}_{m.name}" for m in migrations.available()
    ]
    assert second.returncode == 0
    assert second.stdout == (
        f"schema is current (latest migration {LATEST.version:04d}_{LATEST.name})\n"
    )


def test_inspection_before_migrating_says_what_to_run(empty_database_url):
    result = admin("status")
    assert result.returncode == 1
    assert "run `task-processor migrate`" in result.stderr and "Traceback" not in result.stderr


def test_status_counts_tasks_per_state_and_the_oldest_waiting(conn):
    insert_task(conn, scheduled="now() - interval '2 hours'")
    insert_task(conn)
    insert_task(conn, scheduled="now() + interval '1 day'")
    insert_task(conn, state="succeeded")
    insert_task(conn, state="dead", attempts=3)

    for command in ("status", "stats"):
        result = admin(command)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:5] == [
            "waiting    3",
            "running    0",
            "succeeded  1",
            "dead       1",
            "cancelled  0",
        ]
        assert lines[5].startswith("waiting now 2, scheduled later 1, oldest waiting for 2h 0")

    summary = json.loads(admin("status", "--json").stdout)
    assert summary["states"] == {
        "waiting": 3,
        "running": 0,
        "succeeded": 1,
        "dead": 1,
        "cancelled": 0,
    }
    assert (summary["waiting_due"], summary["waiting_scheduled"]) == (2, 1)
    assert 7200 <= summary["oldest_due_seconds"] < 7200 + 600


def test_list_filters_by_state_and_identifier_newest_first(conn):
    old = insert_task(conn, identifier="mail.send")
    dead = insert_task(
        conn,
        identifier="mail.send",
        state="dead",
        attempts=3,
        error="Traceback ...\nSMTPError: relay refused",
    )
    other = insert_task(conn, identifier="report.build")

    every = admin("list").stdout.splitlines()
    assert [int(line.split()[0]) for line in every[1:]] == [other, dead, old]
    assert "(SMTPError: relay refused)" in every[2]

    mail = admin("list", "--identifier", "mail.send", "--state", "waiting").stdout.splitlines()
    assert [int(line.split()[0]) for line in mail[1:]] == [old]
    limited = admin("list", "--limit", "1").stdout.splitlines()
    assert [int(line.split()[0]) for line in limited[1:]] == [other]


def test_list_refuses_an_unknown_state_with_exit_78(database_url):
    result = admin("list", "--state", "finished")
    assert result.returncode == 78
    assert "--state" in result.stderr and "waiting" in result.stderr


def test_show_prints_the_task_its_runs_and_errors(conn):
    task_id = insert_task(
        conn, identifier="mail.send", state="dead", attempts=2, error="RuntimeError: second"
    )
    fetch_all(
        conn,
        """
        INSERT INTO task_processor.runs (task_id, attempt, worker, started_at, result, error)
        VALUES (%(id)s, 1, 'p1/0.0', now(), 'failure', 'Traceback\nRuntimeError: first'),
               (%(id)s, 2, 'p1/1.0', now(), 'timeout', 'RuntimeError: second')
        RETURNING id""",
        {"id": task_id},
    )

    result = admin("show", str(task_id))

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"task {task_id}: mail.send\n")
    for expected in (
        "state        dead",
        "attempts     2 of 3",
        'args         [1, "two"]',
        'kwargs       {"k": true}',
        "runs (2)",
        "#1 failure",
        "on p1/0.0",
        "    RuntimeError: first",
        "#2 timeout",
        "on p1/1.0",
    ):
        assert expected in out, expected


def test_show_an_unknown_task_exits_1(database_url):
    result = admin("show", "424242")
    assert (result.returncode, result.stderr) == (1, "task-processor: no task 424242\n")


def test_requeue_by_id_gives_dead_tasks_a_fresh_budget(conn):
    dead = insert_task(
        conn, state="dead", attempts=3, error="boom", scheduled="now() - interval '1 day'"
    )
    waiting = insert_task(conn)

    result = admin("requeue", str(dead), str(waiting), "999999")

    assert result.returncode == 1
    assert result.stdout == f"requeued 1 dead task: {dead}\n"
    assert f"task {waiting} is waiting, not dead: left as it is" in result.stderr
    assert "task 999999 does not exist" in result.stderr
    assert fetch_all(
        conn,
        "SELECT state, attempts, finished_at, last_error, "
        "scheduled_for > now() - interval '1 hour' "
        "FROM task_processor.tasks WHERE id = %s",
        (dead,),
    ) == [("waiting", 0, None, "boom", True)]


def test_requeue_every_dead_task_of_one_identifier(conn):
    mail = [insert_task(conn, identifier="mail.send", state="dead") for _ in range(3)]
    report = insert_task(conn, identifier="report.build", state="dead")
    succeeded = insert_task(conn, identifier="mail.send", state="succeeded")

    result = admin("requeue", "--dead", "--identifier", "mail.send")

    assert (result.returncode, result.stdout) == (0, "requeued 3 dead tasks\n")
    states = dict(fetch_all(conn, "SELECT id, state FROM task_processor.tasks"))
    assert [states[i] for i in mail] == ["waiting"] * 3
    assert (states[report], states[succeeded]) == ("dead", "succeeded")
    assert admin("requeue", "--dead").stdout == "requeued 1 dead task\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["requeue"],
        ["requeue", "1", "--dead"],
        ["requeue", "1", "--identifier", "x"],
        ["requeue", "zero"],
        ["show"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_78(database_url, argv):
    result = admin(*argv)
    assert result.returncode == 78, result
    assert result.stderr.startswith("task-processor: configuration error: ")


def test_tasks_lists_registered_identifiers_with_their_settings():
    result = admin("tasks", "--tasks", "examples.tasks")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["tasks.greet"] == ["10", "0:00:10", "3", "-"]
    assert rows["tasks.count_slowly"] == ["50", "0:00:30", "3", "-"]
    assert rows["tasks.flaky"] == ["20", "0:01:00", "5", "-"]


def test_tasks_reads_the_modules_from_the_environment_too():
    result = admin("tasks", TASK_PROCESSOR_TASKS="examples.tasks")
    assert "tasks.greet" in result.stdout


def test_an_unimportable_task_module_exits_78():
    result = admin("tasks", "--tasks", "examples.no_such_module")
    assert result.returncode == 78
    assert "cannot import task module 'examples.no_such_module'" in result.stderr
    assert "Traceback" not in result.stderr


def test_configuration_errors_exit_78_and_hide_passwords(database_url):
    bad = admin("--database-url", "mysql://app@db/app", "status")
    assert bad.returncode == 78 and "--database-url" in bad.stderr

    url = "postgresql://app:topsecret@db:notaport/app"
    malformed = admin("--database-url", url, "status")
    assert malformed.returncode == 78
    assert "--database-url" in malformed.stderr and "topsecret" not in malformed.stderr


def test_no_database_configured_exits_78_saying_what_to_set(tmp_path):
    """With no URL the embedded server is used (tests/test_embedded_postgres.py); here its
    data directory cannot be made either."""
    (tmp_path / "a-file").write_text("")
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "TASK_PROCESSOR_DATABASE_URL")
    }
    environment["TASK_PROCESSOR_DATA_DIR"] = str(tmp_path / "a-file" / "data")
    result = subprocess.run(
        [*ADMIN_COMMAND, "status"], env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 78
    assert "set DATABASE_URL" in result.stderr
    assert "choose another with --data-dir or TASK_PROCESSOR_DATA_DIR" in result.stderr
