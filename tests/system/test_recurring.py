"""Recurring tasks against the real database: registration, the schedule grid, one run per slot
with several processors, no writes while idle, and definitions across rolling deploys.

Each ``RecurringDuty`` here stands for one processor (its own id, its own processors row and
its own connection); what a processor's code defines is what is registered when it starts.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from datetime import time as time_of_day
from zoneinfo import ZoneInfo

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest
from databases import fetch_all

from common import recurring, registry
from common.serialization import ArgumentError
from common.tasks import register_recurring_task
from supervisor import recurring as scheduler
from supervisor import recurring_queries
from supervisor.recurring import RecurringDuty

HOUR_US = 3600 * 1_000_000


@pytest.fixture(autouse=True)
def no_other_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's processors know only what the test defines, not the recurring tasks that
    other test modules imported into this process."""
    monkeypatch.setattr(recurring, "_definitions", {})


@pytest.fixture
def define() -> Iterator[Callable[..., str]]:
    """Registers recurring tasks for one test (under fresh names) and forgets them after."""
    defined: list[str] = []

    def define_task(
        run_every: timedelta = timedelta(hours=1), name: str | None = None, **options
    ) -> str:
        def task(*args, **kwargs) -> None:
            """A task that the tests never run in this process."""

        task_name = name or f"task_{uuid.uuid4().hex[:8]}"
        handler = register_recurring_task(run_every=run_every, task_name=task_name, **options)(task)
        defined.append(handler.identifier)
        return handler.identifier

    yield define_task
    for identifier in defined:
        recurring.unregister(identifier)


@pytest.fixture
def connect(database_url: str) -> Iterator[Callable[..., psycopg2.extensions.connection]]:
    """Opens autocommit connections like the supervisor's; all closed after the test."""
    opened: list[psycopg2.extensions.connection] = []

    def open_connection(**options) -> psycopg2.extensions.connection:
        connection = psycopg2.connect(database_url, **options)
        connection.autocommit = True
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()


def add_processor(
    conn, *, started_ago: float = 0.0, state: str = "running", silent_for: float = 0.0
) -> str:
    """Insert a processors row as a supervisor would; returns its id."""
    processor_id = f"test-{uuid.uuid4().hex[:8]}"
    fetch_all(
        conn,
        """
        INSERT INTO task_processor.processors
            (id, host, pid, started_at, last_beat_at, num_workers, grace_period_ms, state,
             stopped_at)
        VALUES (%s, 'test-host', 1, now() - %s * interval '1 second',
                now() - %s * interval '1 second', 1, 20000, %s,
                CASE WHEN %s = 'stopped' THEN now() END)
        RETURNING id
    """,
        (processor_id, started_ago, silent_for, state, state),
    )
    return processor_id


def started_duty(conn, connection, **processor_row) -> RecurringDuty:
    """A processor that starts now with whatever is registered now."""
    duty = RecurringDuty(add_processor(conn, **processor_row))
    duty.start(connection)
    return duty


def definition_row(conn, identifier: str) -> dict:
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        cursor.execute(
            "SELECT *, now() AS db_now FROM task_processor.recurring_tasks WHERE identifier = %s",
            (identifier,),
        )
        return cursor.fetchone()


def one_period_passes(conn, identifier: str) -> None:
    """Move a definition and its runs one period into the past: as if a period went by."""
    fetch_all(
        conn,
        """
        WITH moved AS (
            UPDATE task_processor.recurring_tasks
            SET grid_origin = grid_origin - run_every_us * interval '1 microsecond',
                next_run_at = next_run_at - run_every_us * interval '1 microsecond'
            WHERE identifier = %(identifier)s
            RETURNING run_every_us
        )
        UPDATE task_processor.tasks
        SET recurring_slot = recurring_slot - (SELECT run_every_us FROM moved)
                                              * interval '1 microsecond'
        WHERE recurring_identifier = %(identifier)s
        RETURNING 1
    """,
        {"identifier": identifier},
    )


def runs_of(conn, identifier: str) -> list[tuple]:
    return fetch_all(
        conn,
        """
        SELECT recurring_slot, identifier, state FROM task_processor.tasks
        WHERE recurring_identifier = %s ORDER BY recurring_slot
    """,
        (identifier,),
    )


# -- registration --------------------------------------------------------------------------


def test_a_recurring_task_is_also_a_normal_task_handler(define):
    identifier = define(timeout=timedelta(minutes=5), name="nightly_report")
    handler = registry.get(identifier)
    assert identifier == "test_recurring.nightly_report"
    assert handler.timeout == timedelta(minutes=5)
    assert [d.identifier for d in recurring.definitions()].count(identifier) == 1
    with pytest.raises(registry.DuplicateTaskError, match="nightly_report"):
        define(name="nightly_report")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"run_every": 60}, TypeError, "run_every must be a timedelta"),
        ({"run_every": timedelta(milliseconds=500)}, ValueError, "at least 0:00:01"),
        ({"first_run_time": datetime(2024, 1, 1, 3)}, ValueError, "timezone-aware"),
        ({"first_run_time": "03:00"}, TypeError, "first_run_time must be"),
        (
            {"first_run_time": time_of_day(3, tzinfo=ZoneInfo("Europe/London"))},
            ValueError,
            "offset changes over the year",
        ),
        ({"args": (object(),)}, ArgumentError, "JSON cannot carry"),
    ],
)
def test_bad_definitions_are_refused_with_a_clear_error(define, options, error, message):
    options.setdefault("run_every", timedelta(hours=1))
    name = f"bad_{uuid.uuid4().hex[:8]}"
    with pytest.raises(error, match=message):
        define(name=name, **options)
    with pytest.raises(registry.UnknownTaskError):
        registry.get(f"test_recurring.{name}")


def test_a_time_of_day_anchors_the_grid_on_the_epoch_day():
    assert recurring.grid_origin(time_of_day(3, 15)) == datetime(1970, 1, 1, 3, 15, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    assert recurring.grid_origin(time_of_day(3, 15, tzinfo=plus_two)) == datetime(
        1970, 1, 1, 1, 15, tzinfo=UTC
    )


# -- schedule --------------------------------------------------------------------------------


def test_start_writes_definitions_and_what_the_processor_knows(conn, connect, define):
    identifier = define(args=(1, "a"), kwargs={"b": True})
    duty = started_duty(conn, connect())
    row = definition_row(conn, identifier)
    assert row["run_every_us"] == HOUR_US
    assert row["first_run_time"] is None
    assert row["args"] == [1, "a"] and row["kwargs"] == {"b": True}
    assert row["grid_origin"] == row["next_run_at"] <= row["db_now"]  # first run at first start
    assert fetch_all(
        conn,
        "SELECT processor_id FROM task_processor.processor_recurring_tasks WHERE identifier = %s",
        (identifier,),
    ) == [(duty.processor_id,)]


def test_first_run_at_first_start_then_on_the_grid(conn, connect, define):
    identifier = define(args=(7,), priority=5, max_attempts=2, timeout=timedelta(seconds=90))
    connection = connect()
    duty = started_duty(conn, connection)
    assert duty.next_due() <= time.monotonic()
    duty.run(connection)
    duty.run(connection)
    origin = definition_row(conn, identifier)["grid_origin"]
    (task,) = fetch_all(
        conn,
        """
        SELECT identifier, args, kwargs, priority, max_attempts, timeout_ms, state,
               recurring_slot
        FROM task_processor.tasks WHERE recurring_identifier = %s
    """,
        (identifier,),
    )
    assert task == (identifier, [7], {}, 5, 2, 90000, "waiting", origin)
    assert definition_row(conn, identifier)["next_run_at"] == origin + timedelta(hours=1)
    assert time.monotonic() + scheduler.RECHECK_SECONDS - 1 < duty.next_due()


def test_a_future_first_run_time_waits_for_it(conn, connect, define):
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    identifier = define(first_run_time=first)
    connection = connect()
    duty = started_duty(conn, connection)
    duty.run(connection)
    assert runs_of(conn, identifier) == []
    assert definition_row(conn, identifier)["next_run_at"] == first


def test_a_past_first_run_time_starts_at_the_next_grid_point(conn, connect, define):
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=150)
    identifier = define(first_run_time=first)
    connection = connect()
    duty = started_duty(conn, connection)
    duty.run(connection)
    assert runs_of(conn, identifier) == []
    assert definition_row(conn, identifier)["next_run_at"] == first + timedelta(hours=3)


def test_after_downtime_of_several_periods_the_latest_slot_runs_once(conn, connect, define):
    identifier = define()
    connection = connect()
    duty = started_duty(conn, connection)
    # The processors were away for five and a half periods since the last run.
    fetch_all(
        conn,
        """
        UPDATE task_processor.recurring_tasks
        SET grid_origin = date_trunc('second', now()) - interval '5 hours 30 minutes',
            next_run_at = date_trunc('second', now()) - interval '5 hours 30 minutes'
        WHERE identifier = %s RETURNING 1
    """,
        (identifier,),
    )
    origin = definition_row(conn, identifier)["grid_origin"]
    duty.run(connection)
    duty.run(connection)
    assert [slot for slot, _, _ in runs_of(conn, identifier)] == [origin + timedelta(hours=5)]
    assert definition_row(conn, identifier)["next_run_at"] == origin + timedelta(hours=6)


def test_a_failed_run_keeps_the_schedule_and_stays_visible(conn, connect, define):
    identifier = define()
    connection = connect()
    duty = started_duty(conn, connection)
    duty.run(connection)
    # The run failed for good, as a worker records it.
    fetch_all(
        conn,
        """
        UPDATE task_processor.tasks
        SET state = 'dead', attempts = 3, finished_at = now(), last_error = 'boom'
        WHERE recurring_identifier = %s RETURNING 1
    """,
        (identifier,),
    )
    assert fetch_all(
        conn,
        """
        SELECT last_state, last_attempts, last_error FROM task_processor.recurring_task_status
        WHERE identifier = %s
    """,
        (identifier,),
    ) == [("dead", 3, "boom")]
    one_period_passes(conn, identifier)
    duty.run(connection)
    assert [state for _, _, state in runs_of(conn, identifier)] == ["dead", "waiting"]


def test_the_database_refuses_a_second_task_for_a_slot(conn):
    insert = """
        INSERT INTO task_processor.tasks (identifier, recurring_identifier, recurring_slot)
        VALUES ('x.y', 'x.y', '2024-01-01T00:00:00Z')
    """
    fetch_all(conn, insert + " RETURNING id")
    with pytest.raises(psycopg2.errors.UniqueViolation):
        fetch_all(conn, insert)


def test_three_processors_enqueue_exactly_one_run_per_period(conn, connect, define, caplog):
    caplog.set_level(logging.INFO, logger="supervisor.recurring")
    origin = datetime.now(UTC).replace(microsecond=0)
    identifier = define(run_every=timedelta(seconds=1), first_run_time=origin)
    duties = [(started_duty(conn, connect()), connect()) for _ in range(3)]
    errors: list[BaseException] = []
    stop_at = time.monotonic() + 4.5

    def processor_loop(duty: RecurringDuty, connection) -> None:
        try:
            while time.monotonic() < stop_at:
                if time.monotonic() >= duty.next_due():
                    duty.run(connection)
                time.sleep(0.002)
        except BaseException as error:  # reported by the test below
            errors.append(error)

    threads = [threading.Thread(target=processor_loop, args=pair) for pair in duties]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors
    slots = [slot for slot, _, _ in runs_of(conn, identifier)]
    assert len(slots) >= 3
    assert all(
        later - earlier == timedelta(seconds=1) for earlier, later in itertools.pairwise(slots)
    )
    assert all((slot - origin) % timedelta(seconds=1) == timedelta(0) for slot in slots)
    # The row lock alone kept the processors apart: none of them hit the unique slot index.
    assert not [r for r in caplog.records if "already had a task" in r.getMessage()]
    queued = [r for r in caplog.records if f"{identifier}: queued task" in r.getMessage()]
    assert len(queued) == len(slots)


# -- cost while idle -------------------------------------------------------------------------


class RecordingConnection(psycopg2.extras.LoggingConnection):
    """A real connection that also keeps the text of every statement it sends."""

    def initialize(self, logobj: logging.Logger | None = None) -> None:
        super().initialize(logobj or logging.getLogger("test_recurring.statements"))
        self.statements: list[str] = []

    def filter(self, msg, curs):
        self.statements.append(msg.decode() if isinstance(msg, bytes) else msg)
        return msg


def write_count(observer, connection) -> int:
    """Rows inserted, updated and deleted in task_processor tables so far, including every
    change ``connection`` made: its pending statistics are flushed first."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
    connection.statements.clear()
    fetch_all(observer, "SELECT pg_stat_clear_snapshot()")
    ((count,),) = fetch_all(
        observer,
        """
        SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
        FROM pg_stat_user_tables WHERE schemaname = 'task_processor'
    """,
    )
    return count


def test_an_idle_processor_reads_once_per_check_and_writes_nothing(conn, connect, define):
    identifier = define()
    connection = connect(connection_factory=RecordingConnection)
    connection.initialize()
    duty = started_duty(conn, connection)
    duty.run(connection)  # the first run, at the first start
    before = write_count(conn, connection)
    for _ in range(20):
        duty.run(connection)
    statements = list(connection.statements)
    assert write_count(conn, connection) == before
    assert len(statements) == 20
    assert all(statement.lstrip().startswith("SELECT") for statement in statements)
    # The count does see this connection's writes: a due run makes some.
    one_period_passes(conn, identifier)
    before = write_count(conn, connection)
    duty.run(connection)
    assert write_count(conn, connection) == before + 2  # the task inserted, the row advanced
    assert len(runs_of(conn, identifier)) == 2


def test_the_due_check_is_an_index_scan(conn, connect, define):
    define()
    connection = connect()
    started_duty(conn, connection)
    fetch_all(conn, "SELECT set_config('enable_seqscan', 'off', false)")
    plan = "\n".join(
        row[0]
        for row in fetch_all(
            conn,
            "EXPLAIN " + recurring_queries.DUE_SOON,
            {"horizon_seconds": 30, "identifiers": ["a.b"]},
        )
    )
    assert "Index" in plan and "Seq Scan" not in plan, plan


# -- definitions across deploys --------------------------------------------------------------


def test_a_changed_definition_updates_its_row(conn, connect, define):
    identifier = define(args=(1,), name="changing")
    connection = connect()
    started_duty(conn, connection)
    row = definition_row(conn, identifier)
    recurring.unregister(identifier)

    define(args=(2,), name="changing")  # same schedule, new arguments
    started_duty(conn, connection)
    same_schedule = definition_row(conn, identifier)
    assert same_schedule["args"] == [2]
    assert same_schedule["next_run_at"] == row["next_run_at"]
    assert same_schedule["defined_at"] > row["defined_at"]
    recurring.unregister(identifier)

    define(run_every=timedelta(minutes=10), args=(2,), name="changing")
    started_duty(conn, connection)
    new_schedule = definition_row(conn, identifier)
    assert new_schedule["run_every_us"] == 600 * 1_000_000
    assert new_schedule["grid_origin"] == row["grid_origin"]  # unset first_run_time: kept
    assert new_schedule["next_run_at"] >= new_schedule["defined_at"]
    assert (new_schedule["next_run_at"] - row["grid_origin"]) % timedelta(minutes=10) == timedelta(
        0
    )


def test_a_processor_skips_identifiers_it_does_not_know_without_locking(conn, connect, define):
    known = define()
    old_connection = connect()
    old = started_duty(conn, old_connection)
    newer = define()  # a newer release adds a task
    started_duty(conn, connect())
    fetch_all(conn, "UPDATE task_processor.recurring_tasks SET next_run_at = now() RETURNING 1")
    locker = connect()
    locker.autocommit = False
    with locker.cursor() as cursor:  # the newer release is busy with its definition
        cursor.execute(
            "SELECT 1 FROM task_processor.recurring_tasks WHERE identifier = %s FOR UPDATE",
            (newer,),
        )
    fetch_all(old_connection, "SELECT set_config('lock_timeout', '2s', false)")
    old.run(old_connection)
    locker.rollback()
    assert len(runs_of(conn, known)) == 1
    assert runs_of(conn, newer) == []
    assert definition_row(conn, newer) is not None


def test_a_removed_definition_is_retired_once_no_live_processor_has_it(
    conn, connect, define, monkeypatch
):
    monkeypatch.setattr(scheduler, "RECHECK_SECONDS", 0.05)
    kept, removed = define(), define()
    old_connection = connect()
    old = started_duty(conn, old_connection, started_ago=60)
    recurring.unregister(removed)  # the new release no longer has it

    new_connection = connect()
    new = started_duty(conn, new_connection)
    assert definition_row(conn, removed) is not None  # the old processor still runs it
    fetch_all(conn, "UPDATE task_processor.recurring_tasks SET next_run_at = now() RETURNING 1")
    new.run(new_connection)
    assert runs_of(conn, removed) == []
    old.run(old_connection)
    assert len(runs_of(conn, removed)) == 1

    fetch_all(
        conn,
        "UPDATE task_processor.processors SET state = 'stopped', stopped_at = now() "
        "WHERE id = %s RETURNING 1",
        (old.processor_id,),
    )
    time.sleep(0.1)
    assert new.next_due() <= time.monotonic()
    new.run(new_connection)
    assert definition_row(conn, removed) is None
    assert definition_row(conn, kept) is not None
    assert len(runs_of(conn, removed)) == 1  # its tasks stay


def test_a_silent_processor_no_longer_holds_its_definitions(conn, connect, define):
    removed = define()
    started_duty(
        conn, connect(), started_ago=3600, silent_for=scheduler.SILENT_PROCESSOR_SECONDS + 60
    )  # killed, never stopped
    recurring.unregister(removed)
    started_duty(conn, connect())
    assert definition_row(conn, removed) is None


def test_an_older_processor_never_retires_what_a_newer_one_added(conn, connect, define):
    old_processor = add_processor(conn, started_ago=60)
    added = define()  # by the newer release, started after the old one
    started_duty(conn, connect(), state="stopped")  # and already gone again
    recurring.unregister(added)
    old = RecurringDuty(old_processor)  # the old code, without the task, starts its duty
    old.start(connect())
    assert definition_row(conn, added) is not None


@pytest.mark.parametrize(
    ("at", "before", "after"),
    [
        ("2024-01-01 09:00", "2024-01-01 10:00", "2024-01-01 10:00"),  # before the origin
        ("2024-01-01 10:00", "2024-01-01 10:00", "2024-01-01 10:00"),  # the origin
        ("2024-01-01 11:30", "2024-01-01 11:00", "2024-01-01 12:00"),  # between two points
        ("2024-01-01 13:00", "2024-01-01 13:00", "2024-01-01 13:00"),  # on a point
        ("2024-01-01 12:59:59.999999", "2024-01-01 12:00", "2024-01-01 13:00"),
        ("2054-01-01 10:00:00.000001", "2054-01-01 10:00", "2054-01-01 11:00"),  # exact far out
    ],
)
def test_grid_points_around_a_time(conn, at, before, after):
    assert fetch_all(
        conn,
        """
        SELECT task_processor.recurring_slot_at_or_before(o, %(every)s, %(at)s) = %(before)s,
               task_processor.recurring_slot_at_or_after(o, %(every)s, %(at)s) = %(after)s
        FROM (SELECT timestamptz '2024-01-01 10:00 UTC' AS o) AS origin
    """,
        {"every": HOUR_US, "at": at + "+00", "before": before + "+00", "after": after + "+00"},
    ) == [(True, True)]


def test_a_definition_deleted_under_a_live_processor_is_written_again(conn, connect, define):
    identifier = define()
    connection = connect()
    duty = started_duty(conn, connection)
    duty.run(connection)
    fetch_all(
        conn,
        "DELETE FROM task_processor.recurring_tasks WHERE identifier = %s RETURNING 1",
        (identifier,),
    )
    duty.run(connection)
    assert definition_row(conn, identifier) is not None
