"""A database that is down gives one clear error naming host and database, never a password
nor a traceback; a connection that broke is replaced."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from commands import admin
from databases import fetch_all

from common import db, enqueue, settings
from common.tasks import register_task_handler

PASSWORD = "hunter2-secret"


@pytest.fixture
def down_url() -> str:
    """A URL whose port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/appdb"


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1].split("/")[0]


@register_task_handler(task_name="remember")
def remember(value: int) -> int:
    return value


@pytest.fixture
def processor_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    monkeypatch.setattr(settings, "_current", None)
    yield
    enqueue.close_own_connection()


def assert_names_the_database(message: str, url: str) -> None:
    assert f"database 'appdb' on 127.0.0.1:{port_of(url)}" in message
    assert PASSWORD not in message


def test_connect_names_host_and_database(down_url):
    with pytest.raises(db.DatabaseUnavailable) as down:
        db.connect(down_url, "test")
    assert_names_the_database(str(down.value), down_url)
    assert "Check that PostgreSQL is running" in str(down.value)


def test_delay_names_host_and_database(down_url, monkeypatch, processor_mode):
    monkeypatch.setenv("DATABASE_URL", down_url)
    with pytest.raises(db.DatabaseUnavailable) as down:
        remember.delay(args=(1,))
    assert_names_the_database(str(down.value), down_url)


def test_the_queue_database_url_wins_over_database_url(
    down_url, database_url, monkeypatch, processor_mode
):
    monkeypatch.setenv("TASK_PROCESSOR_DATABASE_URL", down_url)
    with pytest.raises(db.DatabaseUnavailable) as down:
        remember.delay(args=(1,))
    assert_names_the_database(str(down.value), down_url)


@pytest.mark.parametrize("command", [["migrate"], ["status"], ["list"], ["requeue", "--dead"]])
def test_admin_command_gives_one_line_and_exit_1(down_url, command):
    result = admin(*command, DATABASE_URL=down_url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("task-processor: cannot connect to ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert_names_the_database(result.stderr, down_url)


def test_a_broken_queue_connection_is_replaced_once(database_url, conn, processor_mode, caplog):
    remember.delay(args=(1,))
    terminated = fetch_all(
        conn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'task-processor enqueue' "
        "AND datname = current_database()",
    )
    assert terminated == [(True,)]

    assert remember.delay(args=(2,)) is not None

    assert fetch_all(conn, "SELECT args FROM task_processor.tasks ORDER BY id") == [([1],), ([2],)]
    assert "queue connection was broken; reconnecting once" in caplog.text
