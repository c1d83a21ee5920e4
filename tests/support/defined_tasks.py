"""Fixtures for tests that define tasks on the fly and choose the run method (a pytest plugin
of the system tests, see tests/system/conftest.py)."""

from __future__ import annotations

import queue as thread_queue
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from common import registry, settings
from common.tasks import TaskHandler, register_task_handler

WAIT_SECONDS = 15


class Recorder:
    """A task function that records each call: its arguments, when and in which thread."""

    def __init__(self) -> None:
        self.calls: thread_queue.Queue[dict[str, Any]] = thread_queue.Queue()

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls.put(
            {
                "args": args,
                "kwargs": kwargs,
                "at": datetime.now(UTC),
                "thread": threading.current_thread(),
            }
        )
        return "done"

    def next_call(self) -> dict[str, Any]:
        return self.calls.get(timeout=WAIT_SECONDS)


@pytest.fixture
def define() -> Iterator[Callable[..., TaskHandler]]:
    """Register tasks under identifiers unique to this test; unregister them afterwards."""
    identifiers: list[str] = []

    def make(function: Callable[..., Any] | None = None, **settings: Any) -> TaskHandler:
        name = f"task_{uuid.uuid4().hex[:10]}"
        handler = register_task_handler(task_name=name, **settings)(function or Recorder())
        identifiers.append(handler.identifier)
        return handler

    yield make
    for identifier in identifiers:
        registry.unregister(identifier)


@pytest.fixture
def run_method(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    monkeypatch.setattr(settings, "_current", None)
    return lambda method: monkeypatch.setenv("TASK_RUN_METHOD", method)
