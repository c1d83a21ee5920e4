"""Recurring tasks: declare them in code; the supervisor's :class:`RecurringDuty` enqueues them.

    @register_recurring_task(run_every=timedelta(hours=1))
    def clean_up() -> None: ...

Run k of a definition is due at ``first_run_time + k * run_every`` (from the first start when
``first_run_time`` is unset), on the database clock, so the schedule never drifts. Each due run is
a normal task (same timeout, attempts, retries); the database holds at most one task per grid
slot. After downtime of several periods the latest passed slot runs once. See docs/recurring.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, time as time_of_day, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from common import recurring_sql, registry
from common.serialization import serialize_arguments

if TYPE_CHECKING:
    from common.tasks import TaskHandler

logger = logging.getLogger(__name__)

MIN_RUN_EVERY = timedelta(seconds=1)
# The supervisor checks again at least this often, so that definitions changed by other
# processors are noticed within this many seconds.
RECHECK_SECONDS = 30.0
# A processor that has not beaten for this long no longer holds its definitions: a removed
# definition that only such processors had can be retired (a processor killed without a clean
# stop keeps the state 'running' in its row forever).
SILENT_PROCESSOR_SECONDS = 600
# Grid origin of a first_run_time given as a time of day: that time on this day (UTC).
TIME_OF_DAY_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class RecurringDefinition:
    """One recurring task as the code defines it."""

    handler: "TaskHandler"
    run_every: timedelta
    first_run_time: datetime | None
    args_json: str
    kwargs_json: str

    @property
    def identifier(self) -> str:
        return self.handler.identifier

    @property
    def run_every_us(self) -> int:
        return self.run_every // timedelta(microseconds=1)


_definitions: dict[str, RecurringDefinition] = {}


def _check_run_every(run_every: Any) -> timedelta:
    if not isinstance(run_every, timedelta):
        raise TypeError(f"run_every must be a timedelta (e.g. timedelta(hours=1)), got "
                        f"{type(run_every).__name__}")
    if run_every < MIN_RUN_EVERY:
        raise ValueError(f"run_every must be at least {MIN_RUN_EVERY}, got {run_every}")
    return run_every


def grid_origin(first_run_time: datetime | time_of_day | None) -> datetime | None:
    """``first_run_time`` as an aware datetime: a datetime must be timezone-aware; a time of
    day (the reference's form, UTC unless it carries a fixed offset) anchors the grid on
    1970-01-01."""
    if first_run_time is None:
        return None
    if isinstance(first_run_time, datetime):
        if first_run_time.tzinfo is None:
            raise ValueError(f"first_run_time {first_run_time} must be timezone-aware, e.g. "
                             f"datetime(2024, 1, 1, 3, 0, tzinfo=timezone.utc)")
        return first_run_time
    if isinstance(first_run_time, time_of_day):
        zone = first_run_time.tzinfo
        if zone is not None and not isinstance(zone, timezone):
            raise ValueError(
                f"first_run_time {first_run_time} carries the zone {zone}, whose offset changes "
                f"over the year: the grid is fixed and cannot follow it. Give a time in UTC or "
                f"with a fixed offset (datetime.timezone), or an aware datetime")
        anchored = datetime.combine(TIME_OF_DAY_EPOCH, first_run_time)
        if anchored.tzinfo is None:
            return anchored.replace(tzinfo=timezone.utc)
        return anchored
    raise TypeError(f"first_run_time must be a datetime, a time of day or None, got "
                    f"{type(first_run_time).__name__}")


def register_recurring_task(run_every: timedelta,
                            first_run_time: datetime | time_of_day | None = None,
                            timeout: timedelta | None = timedelta(minutes=30),
                            args: Sequence[Any] = (),
                            kwargs: Mapping[str, Any] | None = None,
                            task_name: str | None = None,
                            *,
                            priority: int | None = None,
                            max_attempts: int | None = None,
                            ) -> Callable[[Callable[..., Any]], "TaskHandler"]:
    """Register the decorated function as a task that runs every ``run_every``.

    It is also an ordinary task handler (the identifier rules are the same, and it can be
    ``.delay()``-ed). ``priority`` and ``max_attempts`` default to those of any task.
    """
    # Imported here, not at the top: common.tasks imports this module to re-export this function.
    from common.tasks import register_task_handler

    run_every = _check_run_every(run_every)
    origin = grid_origin(first_run_time)
    options: dict[str, Any] = {"task_name": task_name, "timeout": timeout}
    if priority is not None:
        options["priority"] = priority
    if max_attempts is not None:
        options["max_attempts"] = max_attempts

    def decorator(function: Callable[..., Any]) -> "TaskHandler":
        handler = register_task_handler(**options)(function)
        try:
            args_json, kwargs_json = serialize_arguments(handler.identifier, args, kwargs)
        except Exception:
            registry.unregister(handler.identifier)
            raise
        _definitions[handler.identifier] = RecurringDefinition(
            handler, run_every, origin, args_json, kwargs_json)
        return handler

    return decorator


def definitions() -> list[RecurringDefinition]:
    """Every recurring task registered in this process, by identifier."""
    return [_definitions[identifier] for identifier in sorted(_definitions)]


def unregister(identifier: str) -> None:
    """Forget a recurring task and its handler (for tests that define tasks on the fly)."""
    _definitions.pop(identifier, None)
    registry.unregister(identifier)


class RecurringDuty:
    """Owned by the supervisor; all calls happen in the supervisor's single thread.

    :meth:`start` once, then :meth:`run` whenever ``time.monotonic()`` reaches
    :meth:`next_due`. Errors of the connection propagate; the supervisor retries later.
    """

    def __init__(self, processor_id: str) -> None:
        self.processor_id = processor_id
        self._known: dict[str, RecurringDefinition] = {}
        self._next_due = time.monotonic()
        self._retirement_pending = False
        self._next_retirement_check = float("inf")

    def start(self, connection) -> None:
        """Record what this processor knows, write its definitions, retire removed ones."""
        self._known = {definition.identifier: definition for definition in definitions()}
        self._write_definitions(connection, list(self._known.values()))
        logger.info("recurring tasks of this processor: %s",
                    ", ".join(self._known) or "none")
        self._retire_removed(connection)
        self._next_due = time.monotonic()

    def _write_definitions(self, connection, known: list[RecurringDefinition]) -> None:
        with connection.cursor() as cursor:
            cursor.execute(recurring_sql.RECORD_KNOWN, {
                "processor_id": self.processor_id,
                "identifiers": [definition.identifier for definition in known]})
            cursor.execute(recurring_sql.UPSERT_DEFINITIONS, self._definition_rows(known))

    def next_due(self) -> float:
        """The ``time.monotonic()`` value at which :meth:`run` should next be called."""
        return min(self._next_due, self._next_retirement_check)

    def run(self, connection) -> None:
        """Enqueue the runs that are due. With nothing due: one indexed read, no write."""
        if self._retirement_pending and time.monotonic() >= self._next_retirement_check:
            self._retire_removed(connection)
        if not self._known:
            self._next_due = time.monotonic() + RECHECK_SECONDS
            return
        upcoming = self._due_soon(connection)
        missing = [identifier for identifier, seconds in upcoming if seconds is None]
        if missing:
            logger.warning("recurring tasks %s had no definition row (retired while this "
                           "processor could not reach the database, or deleted): writing them "
                           "again", ", ".join(missing))
            self._write_definitions(connection, [self._known[i] for i in missing])
            upcoming = self._due_soon(connection)
        due = [identifier for identifier, seconds in upcoming if seconds is not None
               and seconds <= 0]
        for identifier in due:
            self._enqueue(connection, self._known[identifier])
        if due:  # learn the new times, whoever advanced them
            upcoming = self._due_soon(connection)
        waits = [max(0.0, seconds) for _, seconds in upcoming if seconds is not None]
        self._next_due = time.monotonic() + min([RECHECK_SECONDS, *waits])

    def _definition_rows(self, known: list[RecurringDefinition]) -> dict[str, Any]:
        return {
            "processor_id": self.processor_id,
            "identifiers": [d.identifier for d in known],
            "run_every_us": [d.run_every_us for d in known],
            "first_run_times": [d.first_run_time for d in known],
            "args": [d.args_json for d in known],
            "kwargs": [d.kwargs_json for d in known],
        }

    def _due_soon(self, connection) -> list[tuple[str, float]]:
        with connection.cursor() as cursor:
            cursor.execute(recurring_sql.DUE_SOON, {"horizon_seconds": RECHECK_SECONDS,
                                                    "identifiers": list(self._known)})
            return cursor.fetchall()

    def _enqueue(self, connection, definition: RecurringDefinition) -> None:
        kind = definition.handler.kind
        with connection.cursor() as cursor:
            cursor.execute(recurring_sql.ENQUEUE_DUE, {
                "identifier": definition.identifier, "priority": kind.priority,
                "max_attempts": kind.max_attempts, "timeout_ms": kind.timeout_ms})
            row = cursor.fetchone()
        if row is None:
            return  # another processor enqueued this slot first
        slot, task_id = row
        if task_id is None:
            logger.warning("recurring task %s: slot %s already had a task", definition.identifier,
                           slot.isoformat())
        else:
            logger.info("recurring task %s: queued task %s for %s", definition.identifier,
                        task_id, slot.isoformat())

    def _retire_removed(self, connection) -> None:
        with connection.cursor() as cursor:
            cursor.execute(recurring_sql.RETIRE_REMOVED, {
                "processor_id": self.processor_id, "identifiers": list(self._known),
                "silent_seconds": SILENT_PROCESSOR_SECONDS})
            removed = cursor.fetchall()
        for identifier, retired in removed:
            if retired:
                logger.info("recurring task %s is no longer defined: retired", identifier)
            else:
                logger.info("recurring task %s is no longer defined here but a live processor "
                            "still has it: retiring it later", identifier)
        self._retirement_pending = not all(retired for _, retired in removed)
        self._next_retirement_check = (time.monotonic() + RECHECK_SECONDS
                                       if self._retirement_pending else float("inf"))
