"""Turning what a task did into the outcome a worker records: no database needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from common.tasks import TaskBackoffError, register_task_handler
from worker.runner import ClaimedTask, run_task

ASKED = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)


@register_task_handler()
def backs_off_until() -> None:
    raise TaskBackoffError(delay_until=ASKED)


@register_task_handler()
def backs_off() -> None:
    raise TaskBackoffError()


def _run(identifier: str):
    return run_task(
        ClaimedTask(
            id=1,
            identifier=identifier,
            args_json="[]",
            kwargs_json="{}",
            attempt=1,
            max_attempts=3,
            timeout_ms=1000,
        )
    )


def test_a_backoff_keeps_the_time_the_task_asked_for():
    outcome = _run(backs_off_until.identifier)
    assert (outcome.result, outcome.retry_at) == ("backoff", ASKED)
    assert str(ASKED) in outcome.error


def test_a_backoff_without_a_time_takes_the_next_backoff():
    outcome = _run(backs_off.identifier)
    assert (outcome.result, outcome.retry_at) == ("backoff", None)
    assert "the next backoff" in outcome.error


def test_an_unrecordable_outcome_becomes_a_failure_that_says_why():
    outcome = _run(backs_off_until.identifier)
    replacement = outcome.unrecordable(ValueError("A string literal cannot contain NUL"))
    assert (replacement.result, replacement.retry_at) == ("failure", None)
    assert "could not be recorded (A string literal cannot contain NUL)" in replacement.error
    assert replacement.error.endswith("it was: backoff")
    assert replacement.finished_at - replacement.started_at < timedelta(seconds=5)
