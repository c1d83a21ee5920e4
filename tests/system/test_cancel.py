"""Cancelling waiting tasks: the final state ``cancelled``, from the command line and from
Python, and never a task that a processor has already claimed."""

from __future__ import annotations

import psycopg2
import pytest
from commands import admin
from databases import fetch_all, insert_task
from harness import wait_for

from common import tasks


def state_of(conn, task_id: int) -> tuple:
    return fetch_all(
        conn,
        "SELECT state, finished_at IS NOT NULL FROM task_processor.tasks WHERE id = %s",
        (task_id,),
    )[0]


def test_cancel_command_cancels_waiting_tasks_and_names_the_others(conn):
    due = insert_task(conn)
    delayed = insert_task(conn, scheduled="now() + interval '1 day'")
    dead = insert_task(conn, state="dead")

    result = admin("cancel", str(due), str(delayed), str(dead), "999999")

    assert result.returncode == 1
    assert result.stdout == f"cancelled 2 waiting tasks: {due}, {delayed}\n"
    assert f"task {dead} is dead, not waiting: left as it is" in result.stderr
    assert "task 999999 does not exist" in result.stderr
    assert state_of(conn, due) == state_of(conn, delayed) == ("cancelled", True)
    assert state_of(conn, dead)[0] == "dead"
    assert admin("status", "--json").returncode == 0
    assert '"cancelled": 2' in admin("status", "--json").stdout


def test_cancel_without_ids_is_a_usage_error(database_url):
    assert admin("cancel").returncode == 78


def test_cancel_task_from_python(conn):
    waiting = insert_task(conn)
    succeeded = insert_task(conn, state="succeeded")

    assert tasks.cancel_task(waiting) is True
    assert tasks.cancel_task(waiting) is False  # already cancelled
    assert tasks.cancel_task(succeeded) is False
    assert tasks.cancel_task(10**12) is False
    assert state_of(conn, waiting)[0] == "cancelled"


def test_cancel_task_in_the_callers_transaction(conn, database_url):
    waiting = insert_task(conn)
    connection = psycopg2.connect(database_url)
    try:
        assert tasks.cancel_task(waiting, connection=connection) is True
        connection.rollback()
    finally:
        connection.close()
    assert state_of(conn, waiting)[0] == "waiting"  # rolled back with the caller's work


def test_the_database_refuses_unknown_states(conn):
    with pytest.raises(psycopg2.errors.CheckViolation):
        insert_task(conn, state="paused")


def test_a_cancelled_task_never_runs(conn, start_processor, results):
    from processor_tasks import record

    cancelled = record.delay(args=("cancelled",))
    assert tasks.cancel_task(cancelled)
    record.delay(args=("after",))
    start_processor()
    wait_for(lambda: results("after"), timeout=30)
    assert results("cancelled") == []
    assert state_of(conn, cancelled)[0] == "cancelled"
