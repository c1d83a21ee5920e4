"""Test databases: each test gets a fresh database cloned from a migrated template.

The template's name carries a hash of the migrations, so a changed migration makes a new
template; it is built once under an advisory lock, so parallel test runs (pytest-xdist, or
several checkouts) never race. Each test's database is dropped afterwards.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Iterator

import psycopg2
import pytest

from common import migrations, queue

ADMIN_URL = os.environ.get("TEST_DATABASE_ADMIN_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin():
    connection = psycopg2.connect(ADMIN_URL)
    connection.autocommit = True
    return connection


def url_for(name: str) -> str:
    """The URL of database ``name`` on the test server."""
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


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


def create_database(template: str) -> str:
    """A new database cloned from ``template``; returns its name."""
    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        admin.close()
    return name


def drop_database(name: str) -> None:
    admin = _admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


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
    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
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
