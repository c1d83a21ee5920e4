"""Running waiting tasks inside a test's own process, with the processor's own SQL.

An application's tests enqueue with ``TASK_RUN_METHOD=TASK_PROCESSOR``, then call
:func:`run_waiting_tasks` to run what is due, as a worker would: claimed under a lease, run by
the same runner, recorded in ``task_processor.runs`` with retries and dead tasks as on the
processor. Tasks that the tasks enqueue run too, in the same call. The pytest plugin
(:mod:`worker.pytest_plugin`) offers it as the ``run_tasks`` fixture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from common import db, registry
from common.lifecycle import lease_owner
from common.settings import ProcessorSettings, acting_as_processor
from worker import queries
from worker.runner import ClaimedTask, UndecodableArguments, decode_arguments, run_task

BATCH = 100
LEASE_SECONDS = 300


class TooManyTasks(RuntimeError):
    """The tasks kept enqueueing more than ``max_tasks``: most likely a task that enqueues
    itself."""


@dataclass(frozen=True)
class RanTask:
    """One attempt run by :func:`run_waiting_tasks`."""

    task_id: int
    identifier: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: str  # success | failure | backoff
    error: str | None

    @property
    def succeeded(self) -> bool:
        return self.result == "success"


def run_waiting_tasks(database_url: str | None = None, max_tasks: int = 1000) -> list[RanTask]:
    """Run every due task whose identifier is registered in this process, until none is left;
    return the attempts in the order they ran. Tasks of other identifiers, and tasks due later
    (``delay_until``, a retry's backoff), stay waiting."""
    url = database_url or db.queue_database_url()
    settings = ProcessorSettings(
        database_url=url, processor_id=f"tests-{os.getpid()}", lease_seconds=LEASE_SECONDS
    )
    owner = lease_owner(settings.processor_id, 0, 1)
    connection = db.connect(url, "tests")
    ran: list[RanTask] = []
    try:
        with acting_as_processor(settings):
            while True:
                batch = _claim(connection, owner)
                if not batch:
                    return ran
                if len(ran) + len(batch) > max_tasks:
                    _give_back(connection, owner, batch)
                    raise TooManyTasks(
                        f"more than {max_tasks} tasks ran and more are due; "
                        f"raise max_tasks if that is expected"
                    )
                outcomes = [run_task(task) for task in batch]
                with connection.cursor() as cursor:
                    cursor.execute(queries.FINISH, queries.finish_parameters(outcomes, owner))
                ran += [
                    RanTask(
                        task.id, task.identifier, *_arguments(task), outcome.result, outcome.error
                    )
                    for task, outcome in zip(batch, outcomes, strict=True)
                ]
    finally:
        connection.close()


def _arguments(task: ClaimedTask) -> tuple[list[Any], dict[str, Any]]:
    """What the task was called with; nothing for a row it could not decode (its attempt says
    why it failed)."""
    try:
        return decode_arguments(task)
    except UndecodableArguments:
        return [], {}


def _claim(connection: db.Connection, owner: str) -> list[ClaimedTask]:
    with connection.cursor() as cursor:
        cursor.execute(
            queries.CLAIM,
            queries.claim_parameters(
                limit=BATCH, owner=owner, lease_seconds=LEASE_SECONDS, known=registry.identifiers()
            ),
        )
        rows = cursor.fetchall()
    return [ClaimedTask(*row[:-1]) for row in rows if row[0] is not None]


def _give_back(connection: db.Connection, owner: str, batch: list[ClaimedTask]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            queries.RELEASE_UNSTARTED, {"ids": [task.id for task in batch], "owner": owner}
        )
