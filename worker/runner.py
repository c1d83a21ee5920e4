"""Running one claimed task and turning what happened into an outcome to record."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from common import registry
from common.logs import one_line
from common.tasks import TaskBackoffError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedTask:
    id: int
    identifier: str
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_ms: int


@dataclass(frozen=True)
class Outcome:
    """One attempt, as the runs table records it."""

    task_id: int
    result: str  # success | failure | backoff
    error: str | None
    started_at: datetime
    finished_at: datetime
    retry_at: datetime | None = None

    def unrecordable(self, problem: Exception) -> "Outcome":
        """This attempt as a failure that says why its own outcome could not be stored."""
        reason = one_line(problem, 500)
        return replace(self, result="failure", retry_at=None,
                       error=storable(f"the outcome of this attempt could not be recorded "
                                      f"({reason}); it was: {self.result}"))


def run_task(task: ClaimedTask) -> Outcome:
    """Run ``task``'s handler; an unknown identifier or any exception fails this task alone."""
    started = datetime.now(timezone.utc)
    result, error, retry_at = "success", None, None
    try:
        handler = registry.get(task.identifier)
        handler.function(*task.args, **task.kwargs)
    except TaskBackoffError as backoff:
        retry_at = backoff.delay_until
        if retry_at is None or (isinstance(retry_at, datetime) and retry_at.tzinfo is not None):
            result = "backoff"
            error = f"TaskBackoffError: retry requested for {retry_at or 'the next backoff'}"
        else:
            result, retry_at = "failure", None
            error = (f"TaskBackoffError(delay_until={backoff.delay_until!r}): delay_until must "
                     f"be a timezone-aware datetime or None")
    except registry.UnknownTaskError as unknown:
        result, error = "failure", f"UnknownTaskError: {unknown}"
    except (Exception, SystemExit):  # a task calling sys.exit() fails; the worker lives on
        result, error = "failure", traceback.format_exc()
    if result != "success":
        logger.warning("task %s (%s) attempt %d/%d: %s", task.id, task.identifier, task.attempt,
                       task.max_attempts, (error or "").strip().splitlines()[-1])
    return Outcome(task.id, result, storable(error), started, datetime.now(timezone.utc),
                   retry_at)


def storable(text: str | None) -> str | None:
    """``text`` as PostgreSQL can store it: a NUL character (from an exception message, say)
    would make recording the attempt fail."""
    return text.replace("\x00", "\\x00") if text else text
