"""Rules that hold for every input, checked with generated inputs against the real database:
task arguments arrive the same in every run method, and the recurring grid's SQL functions."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.tasks import register_task_handler
from worker import queries as worker_queries
from worker.runner import ClaimedTask, run_task

FIXTURES = [HealthCheck.function_scoped_fixture]

# What JSON carries and PostgreSQL's jsonb stores: no NUL, no lone surrogate, finite numbers.
text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
arguments = st.tuples(
    st.lists(json_values, max_size=4), st.dictionaries(text, json_values, max_size=4)
)

_received: list[tuple[list, dict]] = []
_arrived = threading.Event()


@register_task_handler()
def echo(*args, **kwargs) -> None:
    """Keeps what it was called with."""
    _received.append((list(args), kwargs))
    _arrived.set()


def _take() -> tuple[list, dict]:
    assert _arrived.wait(10), "the task did not run"
    _arrived.clear()
    return _received.pop()


def _through_the_processor(conn, args: list, kwargs: dict) -> tuple[list, dict]:
    """Enqueue, then claim and run as a worker does: its claim statement, its runner."""
    task_id = echo.delay(args=args, kwargs=kwargs)
    with conn.cursor() as cursor:
        cursor.execute(
            worker_queries.CLAIM,
            worker_queries.claim_parameters(
                limit=1, owner="props/0.1", lease_seconds=60, known=[echo.identifier]
            ),
        )
        (row,) = cursor.fetchall()
        task = ClaimedTask(*row[:-1])
        assert task.id == task_id
        assert run_task(task).result == "success"
        cursor.execute("DELETE FROM task_processor.tasks WHERE id = %s", (task_id,))
    return _take()


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(call=arguments)
def test_a_task_receives_the_same_arguments_in_every_run_method(conn, monkeypatch, call):
    args, kwargs = call
    received = {}
    for method in ("SYNCHRONOUSLY", "SEPARATE_THREAD", "TASK_PROCESSOR"):
        monkeypatch.setenv("TASK_RUN_METHOD", method)
        if method == "TASK_PROCESSOR":
            received[method] = _through_the_processor(conn, args, kwargs)
        else:
            echo.delay(args=args, kwargs=kwargs)
            received[method] = _take()
    # Tuples arrive as lists everywhere.
    assert received["SYNCHRONOUSLY"] == received["SEPARATE_THREAD"] == (args, kwargs)
    # jsonb keeps numbers as decimals and may give a large float back without its point
    # (4.809899696839121e+16 as 48098996968391210): the same float, but an int.
    assert _as_floats(received["TASK_PROCESSOR"]) == _as_floats((args, kwargs))


def _as_floats(value):
    """``value`` with every number a float: equal when the floats they stand for are."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {key: _as_floats(item) for key, item in value.items()}
    return [_as_floats(item) for item in value]


# -- the recurring grid -------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
periods_us = st.integers(min_value=1, max_value=400 * 86_400 * 10**6)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(origin=instants, run_every_us=periods_us, at=instants)
def test_the_recurring_grid_slots_bracket_every_instant(conn, origin, run_every_us, at):
    with conn.cursor() as cursor:
        cursor.execute(
            """
            SELECT task_processor.recurring_slot_at_or_before(%(o)s, %(e)s, %(a)s),
                   task_processor.recurring_slot_at_or_after(%(o)s, %(e)s, %(a)s)""",
            {"o": origin, "e": run_every_us, "a": at},
        )
        before, after = cursor.fetchone()
    every = timedelta(microseconds=run_every_us)

    def on_grid(slot: datetime) -> bool:
        return (slot - origin) % every == timedelta(0)

    assert on_grid(before) and on_grid(after)
    assert before >= origin and after >= origin  # the grid starts at its origin
    if at >= origin:
        assert before <= at < before + every
    else:
        assert before == origin
    assert after >= at and (after == origin or after - every < at)
    assert after - before in (timedelta(0), every) or at < origin


@pytest.mark.parametrize("offset_us", [0, 1, -1])
def test_the_grid_on_its_points_and_next_to_them(conn, offset_us):
    origin = datetime(2024, 1, 1, tzinfo=UTC)
    at = origin + timedelta(hours=5) + timedelta(microseconds=offset_us)
    with conn.cursor() as cursor:
        cursor.execute(
            """
            SELECT task_processor.recurring_slot_at_or_before(%(o)s, 3600000000, %(a)s),
                   task_processor.recurring_slot_at_or_after(%(o)s, 3600000000, %(a)s)""",
            {"o": origin, "a": at},
        )
        before, after = cursor.fetchone()
    five, six, four = (origin + timedelta(hours=h) for h in (5, 6, 4))
    assert (before, after) == {0: (five, five), 1: (five, six), -1: (four, five)}[offset_us]
