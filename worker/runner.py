"""Running one claimed task and turning what happened into an outcome to record."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from datetime import UTC, datetime
from typing import Any, NamedTuple

from common import registry
from common.logs import one_line
from common.tasks import TaskBackoffError

logger = logging.getLogger(__name__)


class ClaimedTask(NamedTuple):
    """A claimed row. Its arguments stay JSON text until the task runs: a row that cannot be
    decoded (nested too deep, the wrong shape) fails that task alone, with its reason."""

    id: int
    identifier: str
    args_json: str
    kwargs_json: str
    attempt: int
    max_attempts: int
    timeout_ms: int
    recurring: bool = False  # a run of a recurring task (the metrics' task_type)
    waited: float = 0.0  # seconds it had been due when it was claimed
    trace_context: str | None = None  # JSON: the W3C trace context of its enqueuer's span


class UndecodableArguments(ValueError):
    """A row's arguments are not what a task can be called with."""


class Outcome(NamedTuple):
    """One attempt, as the runs table records it."""

    task_id: int
    result: str  # success | failure | backoff | timeout
    error: str | None
    started_at: datetime
    finished_at: datetime
    retry_at: datetime | None = None

    def unrecordable(self, problem: Exception) -> Outcome:
        """This attempt as a failure that says why its own outcome could not be stored."""
        reason = one_line(problem, 500)
        return self._replace(
            result="failure",
            retry_at=None,
            error=storable(
                f"the outcome of this attempt could not be recorded "
                f"({reason}); it was: {self.result}"
            ),
        )

    def overran(self, timeout_ms: int) -> Outcome:
        """This attempt as a timeout: it ended past its deadline, whatever its code returned
        (a signal may have cut short the C call it was blocked in)."""
        took = (self.finished_at - self.started_at).total_seconds()
        note = f"; its code had returned: {self.result}" + (f"\n{self.error}" if self.error else "")
        return self._replace(
            result="timeout",
            retry_at=None,
            error=storable(
                f"TimeoutError: the task exceeded its timeout of {timeout_ms / 1000:g} s "
                f"(it ended after {took:.1f} s){note}"
            ),
        )


def decode_arguments(task: ClaimedTask) -> tuple[list[Any], dict[str, Any]]:
    """The task's positional and keyword arguments, or :class:`UndecodableArguments`."""
    try:
        args, kwargs = json.loads(task.args_json), json.loads(task.kwargs_json)
    except RecursionError:
        raise UndecodableArguments("its arguments are nested too deeply to decode") from None
    except ValueError as error:
        raise UndecodableArguments(f"its arguments are not valid JSON ({error})") from None
    if not isinstance(args, list):
        raise UndecodableArguments(f"its args must be a JSON array, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise UndecodableArguments(f"its kwargs must be a JSON object, got {type(kwargs).__name__}")
    return args, kwargs


def run_task(task: ClaimedTask) -> Outcome:
    """Run ``task``'s handler; an unknown identifier, arguments that cannot be decoded or any
    exception fail this task alone. A process that the task forked never gets past this
    function: it must not run the worker's code on the worker's connection."""
    started = datetime.now(UTC)
    result, error, retry_at = "success", None, None
    worker_pid = os.getpid()
    try:
        handler = registry.get(task.identifier)
        args, kwargs = decode_arguments(task)
        handler.function(*args, **kwargs)
    except TaskBackoffError as backoff:
        retry_at = backoff.delay_until
        if retry_at is None or (isinstance(retry_at, datetime) and retry_at.tzinfo is not None):
            result = "backoff"
            error = f"TaskBackoffError: retry requested for {retry_at or 'the next backoff'}"
        else:
            result, retry_at = "failure", None
            error = (
                f"TaskBackoffError(delay_until={backoff.delay_until!r}): delay_until must "
                f"be a timezone-aware datetime or None"
            )
    except registry.UnknownTaskError as unknown:
        result, error = "failure", f"UnknownTaskError: {unknown}"
    except UndecodableArguments as undecodable:
        result = "failure"
        error = f"UndecodableArguments: task {task.id} cannot run: {undecodable}"
    except (Exception, SystemExit):  # a task calling sys.exit() fails; the worker lives on
        result, error = "failure", traceback.format_exc()
    finally:
        if os.getpid() != worker_pid:
            os._exit(0 if result == "success" else 1)  # a child the task forked ends here
    error = storable(error)
    if result != "success":
        logger.warning(
            "task %s (%s) attempt %d/%d: %s",
            task.id,
            task.identifier,
            task.attempt,
            task.max_attempts,
            (error or "").strip().splitlines()[-1],
        )
    return Outcome(task.id, result, error, started, datetime.now(UTC), retry_at)


def run_within_deadline(task: ClaimedTask, deadline: float) -> Outcome:
    """:func:`run_task`, as a timeout if it ended past ``deadline`` (``time.monotonic()``)."""
    outcome = run_task(task)
    return outcome.overran(task.timeout_ms) if time.monotonic() > deadline else outcome


def storable(text: str | None) -> str | None:
    """``text`` as PostgreSQL can store it: a NUL character (from an exception message, say)
    or a lone surrogate (from bytes decoded with ``surrogateescape``) would make recording the
    attempt fail. Both are written escaped."""
    if not text:
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
