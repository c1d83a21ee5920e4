"""A task receives exactly what ``.delay()`` accepted, in every run method; what cannot be carried
is refused at ``.delay()``, naming the task, the call and the argument, and nothing is written."""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo

import processor_tasks
import pytest
from harness import query, wait_for

from common import settings
from common.serialization import MAX_NESTING, ArgumentError
from supervisor import recurring_queries

# Every JSON type, and the values that jsonb would change: floats that it gives back as
# integers (1e20, 1.5e300), the sign of -0.0, and the order of object keys.
EVERY_JSON_TYPE = (
    1e20,
    1.5e300,
    -0.0,
    0.0,
    0.1,
    5e-324,
    1e-7,
    2.5,
    2**70,
    -(2**63),
    0,
    True,
    False,
    None,
    "",
    'ü ☃ \U0001f600 "quoted" \\',
    [],
    {},
    [1, [2.0, {"z": 1, "a": -0.0}]],
    {"beta": 1, "a": 2},
)
EVERY_JSON_KWARGS = {"alpha": 1e16, "b": {"yy": -1.0, "x": [False]}}


@pytest.fixture
def run_method(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(settings, "_current", None)
    return lambda method: monkeypatch.setenv("TASK_RUN_METHOD", method)


def _queued(url: str) -> int:
    return query(url, "SELECT count(*) FROM task_processor.tasks")[0][0]


def _received(url: str, key: str) -> str:
    (row,) = wait_for(
        lambda: query(url, "SELECT key FROM test_results WHERE key LIKE %s", (f"{key}=%",)),
        message=f"the task {key} to run",
    )
    return row[0]


def _expected(key: str) -> str:
    return f"{key}={EVERY_JSON_TYPE!r} {EVERY_JSON_KWARGS!r}"


def test_the_processor_passes_every_json_type_unchanged(database_url, start_processor, results):
    start_processor("--numthreads", "1").wait_ready(1)
    processor_tasks.records_what_it_got.delay(
        args=("processor", *EVERY_JSON_TYPE), kwargs=EVERY_JSON_KWARGS
    )
    assert _received(database_url, "processor") == _expected("processor")


def test_a_recurring_task_keeps_its_arguments_unchanged(database_url):
    """A recurring definition stores its arguments' text too, and its runs copy it."""
    query(
        database_url,
        """
        INSERT INTO task_processor.recurring_tasks (identifier, run_every_us, grid_origin,
            args, kwargs, args_exact, kwargs_exact, next_run_at, defined_by)
        VALUES ('r', 1000000, now(), '[1e20]', '{}', '[1e20]', '{}', now(), 'test')""",
    )
    query(
        database_url,
        recurring_queries.ENQUEUE_DUE,
        {"identifier": "r", "priority": 20, "max_attempts": 1, "timeout_ms": 1000},
    )
    assert query(
        database_url, "SELECT args_exact::text FROM task_processor.tasks WHERE identifier = 'r'"
    ) == [("[1e20]",)]


@pytest.mark.parametrize("method", ["SEPARATE_THREAD", "SYNCHRONOUSLY"])
def test_every_run_method_passes_every_json_type_unchanged(
    database_url, run_method, results, method
):
    run_method(method)
    processor_tasks.records_what_it_got.delay(
        args=(method, *EVERY_JSON_TYPE), kwargs=EVERY_JSON_KWARGS
    )
    assert _received(database_url, method) == _expected(method)


class NoOffset(tzinfo):
    """A tzinfo that does not know its offset: the datetime is naive."""

    def utcoffset(self, moment: datetime | None) -> None:
        return None


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


REFUSED = [
    pytest.param(
        lambda h: h.delay(delay_until=datetime(2030, 1, 1, tzinfo=NoOffset())),
        ValueError,
        r"^{task}: delay_until must be timezone-aware, with a tzinfo that "
        r"gives its UTC offset",
        id="tzinfo without offset",
    ),
    pytest.param(
        lambda h: h.delay(kwargs={"tree": _nested(3000)}),
        ArgumentError,
        r"^{task}: kwargs\['tree'\]\[0\]\[0\].* is nested more than 100 "
        r"lists or dicts deep",
        id="nested 3000 deep",
    ),
    pytest.param(
        lambda h: h.delay(args=(1, 10**5000)),
        ArgumentError,
        r"^{task}: args\[1\] is an integer of more than 4300 digits",
        id="integer too long to print",
    ),
    pytest.param(
        lambda h: h.delay_many([{"args": (1,)}, {}, {"args": (object(),)}]),
        ArgumentError,
        r"^{task} calls\[2\]: args\[0\] has type object",
        id="delay_many names the bad call",
    ),
    pytest.param(
        lambda h: h.delay_many([{}, ("not", "a", "dict")]),
        TypeError,
        r"^{task} calls\[1\]: a call must be a dict",
        id="a call not a dict",
    ),
    pytest.param(
        lambda h: h.delay_many({"args": (1,)}),
        TypeError,
        r"^{task}: delay_many takes a list of calls .* got a dict",
        id="a dict for the calls",
    ),
    pytest.param(
        lambda h: h.delay_many("args"),
        TypeError,
        r"^{task}: delay_many takes a list of calls .* got a str",
        id="a string for the calls",
    ),
    pytest.param(
        lambda h: h.delay(connection="postgresql://localhost/app"),
        TypeError,
        r"^{task}: connection= must be an open psycopg2 connection .* got "
        r"str",
        id="connection not a connection",
    ),
    pytest.param(
        lambda h: h.delay_many([{}], connection=object()),
        TypeError,
        r"^{task}: connection= must be an open psycopg2 connection",
        id="delay_many connection not a connection",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), REFUSED)
@pytest.mark.parametrize("method", ["TASK_PROCESSOR", "SYNCHRONOUSLY"])
def test_what_cannot_be_carried_is_refused_at_delay(
    database_url, run_method, results, call, error, message, method
):
    run_method(method)
    handler = processor_tasks.records_what_it_got
    with pytest.raises(error, match=message.replace("{task}", handler.identifier)):
        call(handler)
    assert _queued(database_url) == 0
    assert query(database_url, "SELECT count(*) FROM test_results") == [(0,)]  # nothing ran


def test_the_nesting_limit_is_exact(database_url, run_method):
    run_method("TASK_PROCESSOR")
    handler = processor_tasks.records_what_it_got
    assert handler.delay(
        args=("deep", _nested(MAX_NESTING - 1)),
        delay_until=datetime.now().astimezone() + timedelta(hours=1),
    )
    with pytest.raises(ArgumentError, match="nested more than"):
        handler.delay(args=("deeper", _nested(MAX_NESTING)))
    assert _queued(database_url) == 1
