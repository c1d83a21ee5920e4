"""The task API on the real database: run methods, transactional enqueue, delay_until,
queue_size under concurrency, bulk enqueue, and every input that is refused."""

from __future__ import annotations

import logging
import math
import os
import select
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import psycopg2
import pytest
from commands import ROOT
from databases import fetch_all
from defined_tasks import Recorder
from harness import processor_settings

from common import enqueue, libpq, lifecycle, queue, registry, settings
from common.config import ConfigError
from common.enqueue import EnqueueNotPermitted, QueueSizeError
from common.migrations import SchemaOutdated
from common.serialization import ArgumentError
from common.tasks import TaskPriority, register_task_handler

WAIT_SECONDS = 15


def count_tasks(conn, identifier: str) -> int:
    return fetch_all(
        conn, "SELECT count(*) FROM task_processor.tasks WHERE identifier = %s", (identifier,)
    )[0][0]


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """A connection LISTENing on the queue's channel, as a processor with a waiting worker
    does; its row says that it waits, without which inserts announce nothing."""
    connection = psycopg2.connect(database_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO task_processor.processors "
            "(id, host, pid, num_workers, grace_period_ms, awaits_tasks) "
            "VALUES ('listening', 'h', 1, 1, 60000, true)"
        )
        cursor.execute(f"LISTEN {lifecycle.NOTIFY_CHANNEL}")
    yield connection
    connection.close()


def wait_for_notifications(connection, count: int) -> list:
    """Wait (bounded) until ``count`` notifications arrived on ``connection``."""
    deadline = datetime.now() + timedelta(seconds=WAIT_SECONDS)
    while len(connection.notifies) < count and datetime.now() < deadline:
        select.select([connection], [], [], 0.5)
        connection.poll()
    return list(connection.notifies)


# -- run methods --------------------------------------------------------------------------


def test_task_processor_mode_writes_a_row_and_runs_nothing(define, run_method, conn):
    run_method("TASK_PROCESSOR")
    handler = define(priority=TaskPriority.HIGH, timeout=timedelta(seconds=7), max_attempts=4)

    task_id = handler.delay(args=(1, "a", (2, 3)), kwargs={"flag": True, "nested": {"x": None}})

    rows = fetch_all(
        conn,
        "SELECT id, identifier, args, kwargs, priority, max_attempts, "
        "timeout_ms, state, attempts, scheduled_for <= now() "
        "FROM task_processor.tasks",
    )
    assert rows == [
        (
            task_id,
            handler.identifier,
            [1, "a", [2, 3]],
            {"flag": True, "nested": {"x": None}},
            10,
            4,
            7000,
            "waiting",
            0,
            True,
        )
    ]
    assert handler.function.calls.empty()


def test_synchronously_runs_inline_with_json_round_tripped_arguments(define, run_method, conn):
    run_method("SYNCHRONOUSLY")
    handler = define()

    assert handler.delay(args=((1, 2),), kwargs={"k": "v"}) is None

    call = handler.function.calls.get_nowait()  # already there: it ran before delay returned
    assert call["args"] == ([1, 2],) and call["kwargs"] == {"k": "v"}
    assert call["thread"] is threading.current_thread()
    assert count_tasks(conn, handler.identifier) == 0


def test_synchronously_the_task_error_reaches_the_caller(define, run_method):
    run_method("SYNCHRONOUSLY")

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        define(fail).delay()


def test_separate_thread_runs_in_another_thread(define, run_method, conn):
    run_method("SEPARATE_THREAD")
    handler = define()

    assert handler.delay(args=("x",)) is None

    call = handler.function.next_call()
    assert call["args"] == ("x",)
    assert call["thread"] is not threading.current_thread()
    assert count_tasks(conn, handler.identifier) == 0


def test_separate_thread_is_the_default(define, run_method, monkeypatch):
    monkeypatch.delenv("TASK_RUN_METHOD", raising=False)
    monkeypatch.setattr(settings, "_current", None)
    handler = define()
    handler.delay()
    assert handler.function.next_call()["thread"] is not threading.current_thread()


def test_separate_thread_waits_for_delay_until(define, run_method):
    run_method("SEPARATE_THREAD")
    handler = define()
    due = datetime.now(UTC) + timedelta(seconds=1)

    handler.delay(args=("later",), delay_until=due)

    call = handler.function.next_call()
    # The timer counts on the monotonic clock; allow for its rounding against the wall clock.
    assert call["at"] >= due - timedelta(milliseconds=50)
    assert call["args"] == ("later",)


def test_synchronously_runs_a_delayed_task_now(define, run_method):
    run_method("SYNCHRONOUSLY")
    handler = define()

    handler.delay(delay_until=datetime.now(UTC) + timedelta(hours=1))

    assert handler.function.calls.qsize() == 1


def test_inside_the_processor_delay_always_enqueues(define, run_method, conn, database_url):
    run_method("SYNCHRONOUSLY")
    handler = define()

    # undone by the run_method fixture's monkeypatch
    settings.enter_processor(processor_settings(database_url))
    task_id = handler.delay(args=(5,))

    assert isinstance(task_id, int)
    assert count_tasks(conn, handler.identifier) == 1
    assert handler.function.calls.empty()


def test_plain_call_and_run_in_thread_never_touch_the_queue(define, run_method, conn):
    run_method("TASK_PROCESSOR")
    handler = define()

    assert handler(1, k=2) == "done"
    assert handler.function.calls.get_nowait()["args"] == (1,)
    thread = handler.run_in_thread(args=(3,), kwargs={"k": 4})
    thread.join(WAIT_SECONDS)
    call = handler.function.next_call()
    assert (call["args"], call["kwargs"], call["thread"]) == ((3,), {"k": 4}, thread)
    assert count_tasks(conn, handler.identifier) == 0


# -- transactional enqueue and wake-ups ---------------------------------------------------------


@pytest.fixture
def caller(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """The application's own connection, in a transaction (psycopg2's default)."""
    connection = psycopg2.connect(database_url)
    yield connection
    connection.close()


def test_enqueue_in_the_callers_transaction_appears_and_notifies_at_commit(
    define, run_method, caller, conn, listener
):
    run_method("TASK_PROCESSOR")
    handler = define()

    task_id = handler.delay(args=("in transaction",), connection=caller)
    assert count_tasks(conn, handler.identifier) == 0
    listener.poll()
    assert listener.notifies == []

    caller.commit()

    assert fetch_all(conn, "SELECT id FROM task_processor.tasks") == [(task_id,)]
    notifications = wait_for_notifications(listener, 1)
    assert [n.channel for n in notifications] == [lifecycle.NOTIFY_CHANNEL]


def test_rolled_back_enqueue_leaves_no_task_and_no_wake_up(
    define, run_method, caller, conn, listener
):
    run_method("TASK_PROCESSOR")
    handler = define()

    handler.delay(args=("rolled back",), connection=caller)
    caller.rollback()
    assert count_tasks(conn, handler.identifier) == 0

    # A later committed task's notification arrives; a rolled-back one would have come first.
    handler.delay(args=("committed",))
    wait_for_notifications(listener, 1)
    listener.poll()
    assert len(listener.notifies) == 1
    assert fetch_all(conn, "SELECT args FROM task_processor.tasks") == [(["committed"],)]


# What an application's role needs to enqueue, as docs/operations.md ("Database roles") lists it.
ENQUEUE_GRANTS = [
    "GRANT USAGE ON SCHEMA task_processor TO {role}",
    "GRANT INSERT, SELECT (id) ON task_processor.tasks TO {role}",
    "GRANT USAGE ON SEQUENCE task_processor.tasks_id_seq TO {role}",
]
QUEUE_SIZE_GRANT = "GRANT SELECT (identifier, state) ON task_processor.tasks TO {role}"


@pytest.fixture
def enqueue_role(database_url: str, conn) -> Iterator[tuple[str, str, str]]:
    """A login role granted only what enqueueing needs, named in capitals (so SQL quotes it);
    yields its name, its name as SQL writes it, and its URL."""
    name = f"TP_enqueue_only_{uuid.uuid4().hex[:8]}"
    role = f'"{name}"'
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} LOGIN")
        for grant in ENQUEUE_GRANTS:
            cursor.execute(grant.format(role=role))
    try:
        yield name, role, database_url.replace("postgres@", f"{name}@")
    finally:
        enqueue.close_own_connection()
        with conn.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


def test_a_role_granted_only_enqueueing_enqueues_and_announces_to_a_waiting_processor(
    define, run_method, conn, listener, enqueue_role, monkeypatch
):
    """The new-task trigger reads which processors wait (task_processor.processors) as the
    inserting role: every role may read those columns, so no grant on that table is needed."""
    run_method("TASK_PROCESSOR")
    name, role, url = enqueue_role
    monkeypatch.setenv("DATABASE_URL", url)
    enqueue.close_own_connection()
    handler = define()

    first = handler.delay(args=("own connection",))
    assert len(wait_for_notifications(listener, 1)) == 1  # the trigger saw the waiting processor
    caller = psycopg2.connect(url)
    try:
        handler.delay_many(
            [{"args": ("in the caller's transaction", n)} for n in range(3)], connection=caller
        )
        caller.commit()
    finally:
        caller.close()

    rows = fetch_all(
        conn,
        "SELECT id, args FROM task_processor.tasks WHERE identifier = %s ORDER BY id",
        (handler.identifier,),
    )
    assert rows[0] == (first, ["own connection"])
    assert [args for _, args in rows[1:]] == [["in the caller's transaction", n] for n in range(3)]
    assert fetch_all(
        conn,
        "SELECT DISTINCT usename FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE %s",
        ("%enqueue%",),
    ) == [(name,)]

    # queue_size counts the waiting tasks of the identifier: one more grant.
    limited = define(queue_size=1)
    with pytest.raises(EnqueueNotPermitted) as refused:
        limited.delay()
    assert f"the database role '{name}' may not enqueue" in str(refused.value)
    assert QUEUE_SIZE_GRANT.format(role=role) in str(refused.value)
    with conn.cursor() as cursor:
        cursor.execute(QUEUE_SIZE_GRANT.format(role=role))
    assert limited.delay() is not None
    assert limited.delay() is None  # refused: one waits already


@pytest.mark.parametrize(
    ("revoked", "refusal"),
    [
        ("INSERT ON task_processor.tasks", "permission denied for table tasks"),
        ("USAGE ON SCHEMA task_processor", "permission denied for schema task_processor"),
        ("USAGE ON SEQUENCE task_processor.tasks_id_seq", "permission denied for sequence"),
    ],
)
def test_a_role_that_may_not_insert_tasks_is_told_the_grants_it_needs(
    define, run_method, conn, enqueue_role, monkeypatch, revoked, refusal
):
    """Refused on the queue's own connection (by the PREPARE made when it opens, for the
    schema) or in the caller's transaction: either way the message names the role."""
    run_method("TASK_PROCESSOR")
    name, role, url = enqueue_role
    with conn.cursor() as cursor:
        cursor.execute(f"REVOKE {revoked} FROM {role}")
    monkeypatch.setenv("DATABASE_URL", url)
    enqueue.close_own_connection()
    handler = define()

    for connection in (None, psycopg2.connect(url)):
        with pytest.raises(EnqueueNotPermitted) as refused:
            handler.delay(connection=connection)
        message = str(refused.value)
        assert f"the database role '{name}' may not enqueue" in message
        assert refusal in message
        for grant in ENQUEUE_GRANTS:
            assert grant.format(role=role) in message
        if connection is not None:
            connection.close()
    assert count_tasks(conn, handler.identifier) == 0


def test_enqueue_on_an_autocommit_connection_commits_at_once(define, run_method, caller, conn):
    run_method("TASK_PROCESSOR")
    handler = define(queue_size=5)
    caller.autocommit = True

    handler.delay(connection=caller)

    assert caller.autocommit is True
    assert count_tasks(conn, handler.identifier) == 1


@pytest.mark.parametrize("entry", ["common.enqueue", "common.queue (the first release's name)"])
def test_the_queue_connection_opened_ahead_is_the_one_delay_uses(define, run_method, conn, entry):
    run_method("TASK_PROCESSOR")
    handler = define()
    enqueue.close_own_connection()

    def backend_pid(connection) -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    if entry == "common.enqueue":
        opened = enqueue.on_own_connection(backend_pid)
    else:
        opened = queue._own_connection().run(backend_pid)
    handler.delay()

    assert enqueue.on_own_connection(backend_pid) == opened
    assert count_tasks(conn, handler.identifier) == 1
    application_name = fetch_all(
        conn, "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (opened,)
    )
    assert application_name and "enqueue" in application_name[0][0]


def test_delay_until_is_stored_as_scheduled_for_and_announced_as_scheduled(
    define, run_method, conn, listener
):
    run_method("TASK_PROCESSOR")
    handler = define()
    paris_summer = timezone(timedelta(hours=2))
    due = datetime(2100, 6, 1, 12, 30, tzinfo=paris_summer)

    later_id = handler.delay(delay_until=due)
    scheduled = dict(fetch_all(conn, "SELECT id, scheduled_for FROM task_processor.tasks"))
    assert scheduled[later_id] == due
    # Idle workers learn of it (to wake when it is due), told that nothing is due yet.
    assert [n.payload for n in wait_for_notifications(listener, 1)] == ["scheduled"]
    listener.notifies.clear()

    assert handler.delay() is not None
    assert [n.payload for n in wait_for_notifications(listener, 1)] == [""]


# -- queue_size ------------------------------------------------------------------------------


@pytest.mark.parametrize("connection_kind", ["own queue connection", "caller's autocommit"])
def test_queue_size_is_exact_under_concurrent_callers(
    define, run_method, database_url, conn, caplog, connection_kind
):
    run_method("TASK_PROCESSOR")
    queue_size, callers = 4, 12
    handler = define(queue_size=queue_size)
    start = threading.Barrier(callers)
    results: list[int | None] = []

    def call(number: int) -> None:
        connection = None
        if connection_kind != "own queue connection":
            connection = psycopg2.connect(database_url)
            connection.autocommit = True
        start.wait()
        try:
            results.append(handler.delay(args=(number,), connection=connection))
        finally:
            if connection is not None:
                connection.close()
            enqueue.close_own_connection()

    caplog.set_level(logging.WARNING, logger="common.tasks")
    threads = [threading.Thread(target=call, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_SECONDS)

    assert len(results) == callers
    assert sum(task_id is not None for task_id in results) == queue_size
    assert count_tasks(conn, handler.identifier) == queue_size
    refusals = [r for r in caplog.records if f"queue_size {queue_size} reached" in r.getMessage()]
    assert len(refusals) == callers - queue_size
    assert all(handler.identifier in r.getMessage() for r in refusals)


def test_queue_size_counts_only_waiting_tasks(define, run_method, conn):
    run_method("TASK_PROCESSOR")
    handler = define(queue_size=1)
    first = handler.delay()
    assert handler.delay() is None

    fetch_all(
        conn,
        "UPDATE task_processor.tasks SET state = 'succeeded' WHERE id = %s RETURNING id",
        (first,),
    )

    assert handler.delay() is not None


# -- bulk ----------------------------------------------------------------------------------


def test_delay_many_enqueues_thousands_in_order(define, run_method, conn):
    run_method("TASK_PROCESSOR")
    handler = define()
    due = datetime.now(UTC) + timedelta(days=1)
    calls = [{"args": (number,), "kwargs": {"n": str(number)}} for number in range(5000)]
    calls.append({"delay_until": due})

    ids = handler.delay_many(calls)

    assert len(ids) == 5001 and ids == sorted(ids) and len(set(ids)) == 5001
    rows = fetch_all(
        conn,
        "SELECT id, args, kwargs FROM task_processor.tasks "
        "WHERE scheduled_for <= now() ORDER BY id",
    )
    assert len(rows) == 5000
    assert all(row == (ids[n], [n], {"n": str(n)}) for n, row in enumerate(rows))
    assert fetch_all(
        conn, "SELECT id, scheduled_for FROM task_processor.tasks WHERE scheduled_for > now()"
    ) == [(ids[-1], due)]


def test_delay_many_respects_queue_size_call_by_call(define, run_method, conn, caplog):
    run_method("TASK_PROCESSOR")
    handler = define(queue_size=3)

    ids = handler.delay_many([{"args": (n,)} for n in range(5)])

    assert [task_id is not None for task_id in ids] == [True] * 3 + [False] * 2
    assert fetch_all(conn, "SELECT args FROM task_processor.tasks ORDER BY id") == [
        ([0],),
        ([1],),
        ([2],),
    ]
    assert "2 of 5 not queued" in caplog.text


def test_delay_many_runs_each_call_synchronously(define, run_method):
    run_method("SYNCHRONOUSLY")
    handler = define()
    assert handler.delay_many([{"args": (1,)}, {"kwargs": {"k": 2}}]) == [None, None]
    first, second = handler.function.next_call(), handler.function.next_call()
    assert (first["args"], second["kwargs"]) == ((1,), {"k": 2})


# -- refused input ---------------------------------------------------------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


REFUSED_ARGUMENTS = [
    pytest.param({"args": ({1, 2},)}, r"args\[0\] has type set \(\{1, 2\}\)", id="set"),
    pytest.param({"args": (Opaque(),)}, r"args\[0\] has type Opaque \(<Opaque>\)", id="object"),
    pytest.param({"args": (math.nan,)}, r"args\[0\] is nan, which JSON cannot carry", id="nan"),
    pytest.param({"kwargs": {"x": [math.inf]}}, r"kwargs\['x'\]\[0\] is inf", id="inf"),
    pytest.param({"args": (b"raw",)}, r"args\[0\] has type bytes", id="bytes"),
    pytest.param(
        {"args": ({1: "one"},)},
        r"args\[0\] has the key 1 \(int\); JSON object keys "
        r"must be strings",
        id="int key",
    ),
    pytest.param(
        {"kwargs": {"when": datetime(2024, 1, 1)}},
        r"kwargs\['when'\] has type datetime",
        id="datetime kwarg",
    ),
    pytest.param({"args": ("a\x00b",)}, r"args\[0\] contains a NUL character", id="NUL"),
    pytest.param({"kwargs": {"k\x00": 1}}, r"kwargs key 'k\\x00' contains a NUL", id="NUL key"),
    pytest.param({"args": "abc"}, r"args must be a tuple or list, got str", id="args str"),
    pytest.param({"args": 5}, r"args must be a tuple or list, got int", id="args int"),
    pytest.param({"args": 0}, r"args must be a tuple or list, got int", id="args zero"),
    pytest.param({"args": ""}, r"args must be a tuple or list, got str", id="args empty str"),
    pytest.param({"args": ("\ud800",)}, r"args\[0\] contains a lone surrogate", id="surrogate"),
    pytest.param({"kwargs": [("k", 1)]}, r"kwargs must be a dict, got list", id="kwargs list"),
]


@pytest.mark.parametrize(("call", "message"), REFUSED_ARGUMENTS)
@pytest.mark.parametrize("method", ["TASK_PROCESSOR", "SYNCHRONOUSLY", "SEPARATE_THREAD"])
def test_arguments_json_cannot_carry_are_refused(define, run_method, conn, call, message, method):
    run_method(method)
    handler = define()

    with pytest.raises(ArgumentError, match=message) as refused:
        handler.delay(**call)

    assert str(refused.value).startswith(handler.identifier)
    assert count_tasks(conn, handler.identifier) == 0
    assert handler.function.calls.empty()


def test_arguments_over_the_size_limit_are_refused(define, run_method, conn, monkeypatch):
    run_method("TASK_PROCESSOR")
    handler = define()
    with pytest.raises(
        ArgumentError,
        match=r"over the limit of 1048576; .*"
        r"TASK_PROCESSOR_MAX_ARGUMENT_BYTES",
    ):
        handler.delay(args=("x" * 1024 * 1024,))

    monkeypatch.setenv("TASK_PROCESSOR_MAX_ARGUMENT_BYTES", "100")
    with pytest.raises(
        ArgumentError,
        match=r"arguments are 1\d\d bytes as JSON, over the "
        r"limit of 100",
    ):
        handler.delay(kwargs={"text": "y" * 100})
    assert handler.delay(args=("small",)) is not None
    assert count_tasks(conn, handler.identifier) == 1


@pytest.mark.parametrize("value", ["lots", "0", "-5"])
def test_an_unreadable_size_limit_is_a_configuration_error(define, run_method, monkeypatch, value):
    run_method("TASK_PROCESSOR")
    monkeypatch.setenv("TASK_PROCESSOR_MAX_ARGUMENT_BYTES", value)
    with pytest.raises(
        ConfigError,
        match=r"TASK_PROCESSOR_MAX_ARGUMENT_BYTES: expected a "
        r"whole number from 1 to",
    ):
        define().delay()


def test_delay_until_must_be_an_aware_datetime(define, run_method, conn):
    run_method("TASK_PROCESSOR")
    handler = define()
    with pytest.raises(ValueError, match="delay_until must be timezone-aware"):
        handler.delay(delay_until=datetime.now() + timedelta(hours=1))
    with pytest.raises(TypeError, match="delay_until must be a datetime, got int"):
        handler.delay(delay_until=3600)
    with pytest.raises(TypeError, match=r"unknown keys in a call: \['arg'\]"):
        handler.delay_many([{"arg": 1}])
    assert count_tasks(conn, handler.identifier) == 0


@pytest.mark.parametrize("value", ["THREAD", "", "task-processor-please"])
def test_an_unknown_run_method_names_the_valid_ones(define, run_method, value):
    run_method(value)
    with pytest.raises(
        ConfigError,
        match=f"TASK_RUN_METHOD is {value!r}; valid values are "
        f"TASK_PROCESSOR, SEPARATE_THREAD, SYNCHRONOUSLY",
    ):
        define().delay()


def test_run_method_ignores_case_and_spaces(define, run_method, conn):
    run_method(" task_processor ")
    assert define().delay() is not None


def test_a_duplicate_identifier_is_refused_at_registration(define):
    first = define()
    name = first.identifier.split(".", 1)[1]

    with pytest.raises(
        registry.DuplicateTaskError,
        match=f"{first.identifier!r} is already registered by .*task_name=",
    ):
        register_task_handler(task_name=name)(Recorder())

    assert registry.get(first.identifier) is first


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"timeout": timedelta(0)}, "timeout must be a timedelta above zero"),
        ({"timeout": 60}, r"timeout must be a timedelta .* got 60"),
        ({"timeout": timedelta(days=25)}, "at most 24 days"),
        ({"max_attempts": 0}, "max_attempts must be a whole number from 1 to"),
        ({"max_attempts": 2.5}, r"max_attempts .* got 2.5"),
        ({"queue_size": 0}, "queue_size must be None .* or a whole number of at least 1; got 0"),
        ({"queue_size": "10"}, "queue_size .* got '10'"),
        ({"priority": -1}, "priority must be a whole number from 0 .* to 100"),
        ({"priority": 101}, "priority .* got 101"),
    ],
)
def test_invalid_task_settings_are_refused_at_registration(settings, message):
    name = f"invalid_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ValueError, match=message):
        register_task_handler(task_name=name, **settings)(Recorder())
    assert not any(identifier.endswith(name) for identifier in registry.identifiers())


def test_enqueue_before_migrating_says_what_to_run(define, run_method, empty_database_url):
    run_method("TASK_PROCESSOR")
    try:
        with pytest.raises(SchemaOutdated, match="run `task-processor migrate`"):
            define().delay()
    finally:
        enqueue.close_own_connection()


# -- the shipped examples --------------------------------------------------------------------


def run_examples(method: str, greetings_file: str) -> subprocess.CompletedProcess:
    """``python3 -m examples.enqueue`` from the checkout's root, as the README says."""
    environment = {
        **os.environ,
        "TASK_RUN_METHOD": method,
        "EXAMPLE_GREETINGS_FILE": greetings_file,
    }
    return subprocess.run(
        [sys.executable, "-m", "examples.enqueue"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


EXPECTED_GREETINGS = sorted(
    [
        "Hello, world!",
        "Good morning, processor!",
        "Hello, later!",
        *(f"Hello, guest {n}!" for n in range(1, 6)),
    ]
)


@pytest.mark.parametrize("method", ["SYNCHRONOUSLY", "SEPARATE_THREAD"])
def test_the_examples_run_without_the_processor(method, tmp_path):
    greetings = tmp_path / "greetings.log"
    result = run_examples(method, str(greetings))
    assert result.returncode == 0, result.stderr
    assert f"ran 10 tasks here; greetings are in {greetings}" in result.stdout
    assert sorted(greetings.read_text().splitlines()) == EXPECTED_GREETINGS


def test_the_examples_are_queued_for_the_processor(conn, tmp_path):
    greetings = tmp_path / "greetings.log"
    result = run_examples("TASK_PROCESSOR", str(greetings))
    assert result.returncode == 0, result.stderr
    assert "queued 10 tasks" in result.stdout
    counts = dict(
        fetch_all(conn, "SELECT identifier, count(*) FROM task_processor.tasks GROUP BY identifier")
    )
    assert counts == {"tasks.greet": 8, "tasks.count_slowly": 1, "tasks.flaky": 1}
    assert not greetings.exists()


def test_queue_size_refuses_a_transaction_that_cannot_count_exactly(
    define, run_method, caller, conn
):
    run_method("TASK_PROCESSOR")
    handler = define(queue_size=1)
    caller.set_session(isolation_level="REPEATABLE READ")
    with pytest.raises(QueueSizeError, match="READ COMMITTED"):
        handler.delay(connection=caller)
    caller.rollback()
    assert count_tasks(conn, handler.identifier) == 0


def test_args_none_means_no_arguments(define, run_method, conn):
    run_method("TASK_PROCESSOR")
    handler = define()
    task_id = handler.delay(args=None)
    assert fetch_all(conn, "SELECT args FROM task_processor.tasks WHERE id = %s", (task_id,)) == [
        ([],)
    ]


@pytest.mark.parametrize("connection_speaks", ["UTF8", "LATIN1"])
def test_delay_stores_the_same_row_by_libpq_and_by_psycopg2(
    define, run_method, conn, monkeypatch, connection_speaks
):
    # A connection that does not speak UTF-8 leaves the insert to psycopg2, which converts.
    run_method("TASK_PROCESSOR")
    monkeypatch.setenv("PGCLIENTENCODING", connection_speaks)
    enqueue.close_own_connection()
    handler = define(priority=TaskPriority.LOW, max_attempts=2)
    due = datetime(2100, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=-3, minutes=-30)))
    try:
        task_id = handler.delay(args=("café", 1.5), kwargs={"ü": None}, delay_until=due)
        by_libpq = enqueue.on_own_connection(libpq.usable)
    finally:
        enqueue.close_own_connection()

    assert by_libpq is (connection_speaks == "UTF8")
    assert fetch_all(
        conn,
        "SELECT identifier, args, kwargs, args_exact::text, priority, max_attempts, "
        "scheduled_for FROM task_processor.tasks WHERE id = %s",
        (task_id,),
    ) == [(handler.identifier, ["café", 1.5], {"ü": None}, '["caf\\u00e9",1.5]', 50, 2, due)]


def test_a_tasks_settings_are_fixed_at_registration(define, run_method, conn):
    # Every .delay() shares the settings built at registration: changing one later would
    # silently apply to some of its tasks and not to others, so it is refused.
    run_method("TASK_PROCESSOR")
    handler = define(priority=TaskPriority.LOW, timeout=timedelta(seconds=3), queue_size=9)
    for setting, value in [
        ("priority", 0),
        ("timeout", None),
        ("max_attempts", 9),
        ("queue_size", 1),
    ]:
        with pytest.raises(AttributeError):
            setattr(handler, setting, value)

    task_id = handler.delay()

    assert (handler.priority, handler.timeout, handler.queue_size) == (50, timedelta(seconds=3), 9)
    assert fetch_all(
        conn, "SELECT priority, timeout_ms FROM task_processor.tasks WHERE id = %s", (task_id,)
    ) == [(50, 3000)]


def test_a_function_attribute_does_not_replace_the_handlers_own(define, run_method, conn):
    # The handler copies the function's attributes (functools.update_wrapper); one named like
    # the handler's own (a decorator's marker, say) must not shadow it.
    run_method("TASK_PROCESSOR")

    def report() -> None:
        pass

    report.kind = "report"  # type: ignore[attr-defined]
    report.identifier = "not.this"  # type: ignore[attr-defined]
    handler = define(report, priority=TaskPriority.HIGH)

    task_id = handler.delay()

    assert handler.kind.identifier == handler.identifier != "not.this"
    assert fetch_all(
        conn, "SELECT identifier, priority FROM task_processor.tasks WHERE id = %s", (task_id,)
    ) == [(handler.identifier, 10)]
