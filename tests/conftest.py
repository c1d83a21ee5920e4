"""Test databases: each test gets a fresh database cloned from a migrated template.

The template's name carries a hash of the migrations, so a changed migration makes a new
template; it is built once under an advisory lock, so parallel test runs (pytest-xdist, or
several checkouts) never race. Templates are never dropped by a run: another checkout with other
migrations may be cloning its own at the same moment. Each test's database is dropped afterwards.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from common import migrations, queue
from harness import ADMIN_URL, Processor, become_subreaper, query
from processor_tasks import RESULTS_TABLE


def _admin():
    connection = psycopg2.connect(ADMIN_URL)
    connection.autocommit = True
    return connection


def url_for(name: str) -> str:
    """The URL of database ``name`` on the test server (over TCP or a Unix socket)."""
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + name))


def _template_name() -> str:
    digest = hashlib.sha256()
    for migration in migrations.available():
        digest.update(migration.sql.encode())
    return f"tp_template_{digest.hexdigest()[:12]}"


@pytest.fixture(scope="session")
def template_database() -> str:
    name = _template_name()
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


def _admin_command(sql: str) -> None:
    admin = _admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql)
    finally:
        admin.close()


def create_database(template: str | None = None) -> str:
    """A new database, cloned from ``template`` when given; returns its name."""
    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    _admin_command(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def drop_database(name: str) -> None:
    _admin_command(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(template_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh migrated database for this test, also set as DATABASE_URL."""
    name = create_database(template_database)
    url = url_for(name)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("TASK_PROCESSOR_DATABASE_URL", raising=False)
    try:
        yield url
    finally:
        queue.close_own_connection()
        drop_database(name)


@pytest.fixture
def empty_database_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database with no schema at all, for migration tests."""
    name = create_database()
    url = url_for(name)
    monkeypatch.setenv("DATABASE_URL", url)
    try:
        yield url
    finally:
        drop_database(name)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection to the test database, for checking outcomes."""
    connection = psycopg2.connect(database_url)
    connection.autocommit = True
    try:
        yield connection
    finally:
        connection.close()


def fetch_all(connection, sql: str, params=()) -> list[tuple]:
    """Run ``sql`` and return every row."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


# -- real processors ----------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def subreaper() -> None:
    become_subreaper()


@pytest.fixture
def results(database_url: str) -> Callable[[str], list[tuple]]:
    """Creates the results table; returns a function giving the rows recorded for a key."""
    query(database_url, RESULTS_TABLE)
    return lambda key: query(database_url,
                             "SELECT key, pid FROM test_results WHERE key = %s", (key,))


@pytest.fixture
def start_processor(database_url: str, tmp_path, monkeypatch) -> Iterator[Callable[..., Processor]]:
    """Starts processors on the test database (TASK_RUN_METHOD=TASK_PROCESSOR is set for
    the test's own .delay() calls); kills all of them afterwards."""
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    started: list[Processor] = []

    def start(*args: str, **kwargs) -> Processor:
        processor = Processor(database_url, tmp_path / f"processor-{len(started)}.log", *args,
                              **kwargs)
        started.append(processor)
        return processor

    yield start
    for processor in started:
        processor.stop()
