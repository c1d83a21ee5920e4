"""Schema migrations: applied in order, once, even when many processes migrate together."""

from __future__ import annotations

import subprocess
import threading

import psycopg2
import pytest
from commands import ADMIN_COMMAND
from databases import fetch_all

from common import migrations

VERSIONS = [(m.version, m.name) for m in migrations.available()]


def recorded(url: str) -> list[tuple[int, str]]:
    connection = psycopg2.connect(url)
    try:
        return fetch_all(
            connection,
            "SELECT version, name FROM task_processor.schema_migrations ORDER BY version",
        )
    finally:
        connection.close()


def test_migrations_are_numbered_without_gaps_or_repeats():
    numbers = [version for version, _ in VERSIONS]
    assert numbers[0] == 1
    assert len(set(numbers)) == len(numbers) == numbers[-1]


def test_migrate_applies_everything_in_order_then_nothing(empty_database_url):
    connection = psycopg2.connect(empty_database_url)
    try:
        first = migrations.migrate(connection)
        second = migrations.migrate(connection)
        tables = {
            row[0]
            for row in fetch_all(
                connection, "SELECT tablename FROM pg_tables WHERE schemaname = 'task_processor'"
            )
        }
    finally:
        connection.close()

    assert [(m.version, m.name) for m in first] == VERSIONS
    assert second == []
    assert recorded(empty_database_url) == VERSIONS
    assert {"tasks", "runs", "processors", "workers", "schema_migrations"} <= tables


def test_concurrent_migrations_all_succeed_and_apply_once(empty_database_url):
    callers = 4
    start = threading.Barrier(callers)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        connection = psycopg2.connect(empty_database_url)
        try:
            start.wait()
            applied.append([m.version for m in migrations.migrate(connection)])
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=migrate) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sorted(applied) == [[]] * (callers - 1) + [[v for v, _ in VERSIONS]]
    assert recorded(empty_database_url) == VERSIONS


def test_concurrent_migrate_commands_both_succeed(empty_database_url):
    processes = [
        subprocess.Popen(
            [*ADMIN_COMMAND, "migrate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    stdouts = sorted(stdout for stdout, _ in outputs)
    assert stdouts[0] == "".join(f"applied {v:04d}_{n}\n" for v, n in VERSIONS)
    assert stdouts[1].startswith("schema is current")
    assert recorded(empty_database_url) == VERSIONS


def test_check_current_names_what_is_pending_and_the_command_to_run(empty_database_url):
    connection = psycopg2.connect(empty_database_url)
    try:
        assert [(m.version, m.name) for m in migrations.pending(connection)] == VERSIONS
        with pytest.raises(migrations.SchemaOutdated) as outdated:
            migrations.check_current(connection)
        message = str(outdated.value)
        assert "run `task-processor migrate`" in message
        assert all(f"{v:04d}_{n}" in message for v, n in VERSIONS)

        migrations.migrate(connection)
        migrations.check_current(connection)
    finally:
        connection.close()


def test_check_current_reports_only_the_missing_migration(database_url, conn):
    latest_version, latest_name = VERSIONS[-1]
    fetch_all(
        conn,
        "DELETE FROM task_processor.schema_migrations WHERE version = %s RETURNING version",
        (latest_version,),
    )

    with pytest.raises(
        migrations.SchemaOutdated, match=rf"\(pending: {latest_version:04d}_{latest_name}\)"
    ):
        migrations.check_current(conn)


def test_a_database_ahead_of_the_code_is_accepted(database_url, conn):
    fetch_all(
        conn,
        "INSERT INTO task_processor.schema_migrations (version, name) "
        "VALUES (9999, 'from_a_newer_release') RETURNING version",
    )
    migrations.check_current(conn)
    assert migrations.pending(conn) == []
