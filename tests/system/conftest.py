"""Fixtures of the system tests: a fresh migrated database per test, real processors on it
that are always killed afterwards, and the deployment tests' image and containers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg2
import psycopg2.extensions
import pytest
from databases import create_database, drop_database, ensure_template, url_for
from deploy_podman import Containers, Images, shared_images
from harness import Processor, become_subreaper, query
from processor_tasks import RESULTS_TABLE

from common import enqueue


@pytest.fixture(scope="session")
def template_database() -> str:
    return ensure_template()


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
        enqueue.close_own_connection()
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


# -- real processors ----------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def subreaper() -> None:
    become_subreaper()


@pytest.fixture
def results(database_url: str) -> Callable[[str], list[tuple]]:
    """Creates the results table; returns a function giving the rows recorded for a key."""
    query(database_url, RESULTS_TABLE)
    return lambda key: query(
        database_url, "SELECT key, pid FROM test_results WHERE key = %s", (key,)
    )


@pytest.fixture
def start_processor(database_url: str, tmp_path, monkeypatch) -> Iterator[Callable[..., Processor]]:
    """Starts processors on the test database (TASK_RUN_METHOD=TASK_PROCESSOR is set for
    the test's own .delay() calls); kills all of them afterwards."""
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    started: list[Processor] = []

    def start(*args: str, **kwargs) -> Processor:
        processor = Processor(
            database_url, tmp_path / f"processor-{len(started)}.log", *args, **kwargs
        )
        started.append(processor)
        return processor

    yield start
    for processor in started:
        processor.stop()


# -- the deployment tests: the image is built once per session, containers removed after each


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return shared_images(tmp_path_factory)


@pytest.fixture
def containers(images: Images) -> Iterator[Containers]:
    started = Containers(images.podman)
    yield started
    started.remove_all()
