"""A pytest plugin for applications' own tests (entry point ``pytest11``; installed with the
package, loaded by pytest).

- ``@pytest.mark.task_run_method("SYNCHRONOUSLY")``: the ``TASK_RUN_METHOD`` of one test (or a
  module, with ``pytestmark``); the ``task_run_method`` fixture changes it within a test.
- ``run_tasks``: runs the due tasks that the test enqueued, in the test's process, against the
  queue's database (``TASK_PROCESSOR_DATABASE_URL`` or ``DATABASE_URL``, as the test set them),
  and returns what ran; ``run_tasks.ran`` holds every attempt of the test so far.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common.tasks import TaskRunMethod
from worker.inline import RanTask, run_waiting_tasks

MARKER = "task_run_method"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(method): TASK_RUN_METHOD for this test: TASK_PROCESSOR, "
        f"SEPARATE_THREAD or SYNCHRONOUSLY (task-processor plugin)",
    )


def _valid(method: str | TaskRunMethod) -> str:
    value = method.value if isinstance(method, TaskRunMethod) else str(method).strip().upper()
    try:
        return TaskRunMethod(value).value
    except ValueError:
        valid = ", ".join(m.value for m in TaskRunMethod)
        raise pytest.UsageError(f"task_run_method {method!r}: use one of {valid}") from None


@pytest.fixture
def task_run_method(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str | TaskRunMethod], None]:
    """Sets ``TASK_RUN_METHOD`` for the rest of this test; the marker's method to begin with."""

    def set_method(method: str | TaskRunMethod) -> None:
        monkeypatch.setenv("TASK_RUN_METHOD", _valid(method))

    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        if len(marker.args) != 1:
            raise pytest.UsageError(
                f"@pytest.mark.{MARKER} takes one run method, e.g. "
                f"@pytest.mark.{MARKER}('TASK_PROCESSOR')"
            )
        set_method(marker.args[0])
    return set_method


@pytest.fixture(autouse=True)
def _task_run_method_marker(request: pytest.FixtureRequest) -> None:
    """Applies the marker to tests that carry it without asking for the fixture."""
    if request.node.get_closest_marker(MARKER) is not None:
        request.getfixturevalue("task_run_method")


class TaskRunner:
    """The ``run_tasks`` fixture: call it to run the due tasks; ``ran`` lists every attempt."""

    def __init__(self) -> None:
        self.ran: list[RanTask] = []

    def __call__(self, max_tasks: int = 1000) -> list[RanTask]:
        ran = run_waiting_tasks(max_tasks=max_tasks)
        self.ran += ran
        return ran


@pytest.fixture
def run_tasks() -> TaskRunner:
    return TaskRunner()
