"""Fixtures shared by the processor test modules (imported by them as a pytest plugin)."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

import processor_tasks
from harness import Processor, become_subreaper, query


@pytest.fixture(scope="session", autouse=True)
def subreaper() -> None:
    become_subreaper()


@pytest.fixture
def results(database_url: str) -> Callable[[str], list[tuple]]:
    """Creates the results table; returns a function giving the rows recorded for a key."""
    query(database_url, processor_tasks.RESULTS_TABLE)
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
