"""Recurring task definitions: what ``register_recurring_task`` records for the supervisor's
scheduler (:mod:`supervisor.recurring`), which enqueues each run when it falls due.

Run k of a definition is due at ``first_run_time + k * run_every`` (from the first start when
``first_run_time`` is unset), on the database clock, so the schedule never drifts. Each due run is
a normal task (same timeout, attempts, retries); the database holds at most one task per grid
slot. After downtime of several periods the latest passed slot runs once. See docs/recurring.md.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as time_of_day
from typing import Any, NamedTuple

from common import registry
from common.enqueue import TaskKind

MIN_RUN_EVERY = timedelta(seconds=1)
# Grid origin of a first_run_time given as a time of day: that time on this day (UTC).
TIME_OF_DAY_EPOCH = date(1970, 1, 1)


class RecurringDefinition(NamedTuple):
    """One recurring task as the code defines it."""

    kind: TaskKind
    run_every: timedelta
    first_run_time: datetime | None
    args_json: str
    kwargs_json: str

    @property
    def identifier(self) -> str:
        return self.kind.identifier

    @property
    def run_every_us(self) -> int:
        return self.run_every // timedelta(microseconds=1)


_definitions: dict[str, RecurringDefinition] = {}


def check_run_every(run_every: Any) -> timedelta:
    """``run_every`` if it is a usable period; TypeError or ValueError saying why not."""
    if not isinstance(run_every, timedelta):
        raise TypeError(
            f"run_every must be a timedelta (e.g. timedelta(hours=1)), got "
            f"{type(run_every).__name__}"
        )
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
            raise ValueError(
                f"first_run_time {first_run_time} must be timezone-aware, e.g. "
                f"datetime(2024, 1, 1, 3, 0, tzinfo=timezone.utc)"
            )
        return first_run_time
    if isinstance(first_run_time, time_of_day):
        zone = first_run_time.tzinfo
        if zone is not None and not isinstance(zone, timezone):
            raise ValueError(
                f"first_run_time {first_run_time} carries the zone {zone}, whose offset changes "
                f"over the year: the grid is fixed and cannot follow it. Give a time in UTC or "
                f"with a fixed offset (datetime.timezone), or an aware datetime"
            )
        anchored = datetime.combine(TIME_OF_DAY_EPOCH, first_run_time)
        if anchored.tzinfo is None:
            return anchored.replace(tzinfo=UTC)
        return anchored
    raise TypeError(
        f"first_run_time must be a datetime, a time of day or None, got "
        f"{type(first_run_time).__name__}"
    )


def add(definition: RecurringDefinition) -> None:
    """Record ``definition`` (its handler is registered already)."""
    _definitions[definition.identifier] = definition


def definitions() -> list[RecurringDefinition]:
    """Every recurring task registered in this process, by identifier."""
    return [_definitions[identifier] for identifier in sorted(_definitions)]


def unregister(identifier: str) -> None:
    """Forget a recurring task and its handler (for tests that define tasks on the fly)."""
    _definitions.pop(identifier, None)
    registry.unregister(identifier)
