"""Test databases: each test gets a fresh database cloned from a migrated template.

The template's name carries a hash of the migrations, so a changed migration makes a new
template; it is built once under an advisory lock, so parallel test runs (pytest-xdist, or
several checkouts) never race. Templates are never dropped by a run: another checkout with other
migrations may be cloning its own at the same moment. Each test's database is dropped afterwards.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions

from common import migrations

# The server the tests use: the machine's, or the embedded one that .ci/run starts without it.
ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _admin() -> psycopg2.extensions.connection:
    connection = psycopg2.connect(ADMIN_URL)
    connection.autocommit = True
    return connection


def _admin_command(sql: str) -> None:
    admin = _admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql)
    finally:
        admin.close()


def url_for(name: str) -> str:
    """The URL of database ``name`` on the test server (over TCP or a Unix socket)."""
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + name))


def template_name() -> str:
    digest = hashlib.sha256()
    for migration in migrations.available():
        digest.update(migration.sql.encode())
    return f"tp_template_{digest.hexdigest()[:12]}"


def ensure_template() -> str:
    """The migrated template database of this checkout's migrations, made if missing."""
    name = template_name()
    admin = _admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtext('task_processor.test_template'))")
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{name}"')
                connection = psycopg2.connect(url_for(name))
                try:
                    migrations.migrate(connection)
                finally:
                    connection.close()
            cursor.execute("SELECT pg_advisory_unlock(hashtext('task_processor.test_template'))")
    finally:
        admin.close()
    return name


def create_database(template: str | None = None) -> str:
    """A new database, cloned from ``template`` when given; returns its name."""
    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    _admin_command(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def drop_database(name: str) -> None:
    _admin_command(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fetch_all(
    connection: psycopg2.extensions.connection,
    sql: str,
    params: Sequence[Any] | dict[str, Any] = (),
) -> list[tuple]:
    """Run ``sql`` and return every row."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def insert_task(
    conn,
    identifier: str = "demo.task",
    state: str = "waiting",
    scheduled: str = "now()",
    attempts: int = 0,
    error: str | None = None,
) -> int:
    finished = "now()" if state in ("succeeded", "dead") else "NULL"
    return fetch_all(
        conn,
        f"""
        INSERT INTO task_processor.tasks (identifier, args, kwargs, state, scheduled_for,
                                          attempts, finished_at, last_error)
        VALUES (%s, '[1, "two"]', '{{"k": true}}', %s, {scheduled}, %s, {finished}, %s)
        RETURNING id""",
        (identifier, state, attempts, error),
    )[0][0]
