"""Running one claimed task and turning what happened into an outcome to record."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from common import registry
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


def run_task(task: ClaimedTask) -> Outcome:
    """Run ``task``'s handler; an unknown identifier or any exception fails this task alone."""
    started = datetime.now(timezone.utc)
    result, error, retry_at = "success", None, None
    try:
        handler = registry.get(task.identifier)
        handler.function(*task.args, **task.kwargs)
    except TaskBackoffError as backoff:
        result, retry_at = "backoff", backoff.delay_until
        error = f"TaskBackoffError: retry requested for {backoff.delay_until or 'the next backoff'}"
    except registry.UnknownTaskError as unknown:
        result, error = "failure", f"UnknownTaskError: {unknown}"
    except (Exception, SystemExit):  # a task calling sys.exit() fails; the worker lives on
        result, error = "failure", traceback.format_exc()
    if result != "success":
        logger.warning("task %s (%s) attempt %d/%d: %s", task.id, task.identifier, task.attempt,
                       task.max_attempts, (error or "").strip().splitlines()[-1])
    return Outcome(task.id, result, error, started, datetime.now(timezone.utc), retry_at)
