"""The processor's one listening connection and the wake-up tokens of its idle workers: a real
database, a real pipe, the supervisor's own Listener class, and a running processor."""

from __future__ import annotations

import os
import select
import signal
import time
import uuid

import processor_tasks
import psycopg2
import pytest
from harness import query, task_states, wait_for

from supervisor.listener import QUIET_AFTER, RECHECK_AFTER, Listener
from worker.heartbeat import Beat, WorkerState
from worker.wakeup import WakeUps


def idle_beat(slot: int, due_at: float = 0.0) -> Beat:
    return Beat(
        pid=1000 + slot,
        generation=1,
        state=WorkerState.IDLE,
        beat=time.monotonic(),
        task_id=0,
        deadline=due_at,
        tasks_done=0,
    )


def tokens(wakeups: WakeUps) -> int:
    taken = 0
    while wakeups.take():
        taken += 1
    return taken


def serve(listener: Listener, idle: list[Beat], seconds: float) -> None:
    """The supervisor's wait, as its loop runs it: select on the connection, then tend."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        timeout = min(left, listener.timeout(time.monotonic(), idle))
        readable, _, _ = select.select(listener.fds(), [], [], timeout)
        listener.tend(bool(readable), idle)


def started_listener(database_url: str, wakeups: WakeUps, sleep_interval: float) -> Listener:
    listener = Listener(database_url, "test-processor", sleep_interval, 5.0, wakeups)
    listener.tend(False, [idle_beat(0)])  # connects, and claims once for what it missed
    assert listener.fds(), "the listener connected"
    tokens(wakeups)
    return listener


def test_a_commit_wakes_one_idle_worker_per_notification(database_url, conn):
    wakeups = WakeUps()
    listener = started_listener(database_url, wakeups, sleep_interval=60)
    idle = [idle_beat(slot) for slot in range(4)]
    try:
        with conn.cursor() as cursor:
            cursor.execute("NOTIFY task_processor")
        serve(listener, idle, 0.5)
        assert tokens(wakeups) == 1  # not four: one notification, one claim
    finally:
        listener.close()


def test_no_worker_is_woken_while_all_are_busy(database_url, conn):
    wakeups = WakeUps()
    listener = started_listener(database_url, wakeups, sleep_interval=60)
    try:
        with conn.cursor() as cursor:
            cursor.execute("NOTIFY task_processor")
        serve(listener, [], 0.3)
        assert tokens(wakeups) == 0  # busy workers claim after their batch anyway
    finally:
        listener.close()


def test_the_fallback_poll_is_one_claim_per_interval_for_the_whole_processor(database_url):
    wakeups = WakeUps()
    listener = started_listener(database_url, wakeups, sleep_interval=0.2)
    idle = [idle_beat(slot) for slot in range(8)]
    try:
        serve(listener, idle, 1.1)
        assert 4 <= tokens(wakeups) <= 6  # about 1.1 s / 0.2 s, not 8 workers' worth each
    finally:
        listener.close()


def test_an_idle_worker_is_woken_when_the_delayed_task_it_published_falls_due(database_url):
    wakeups = WakeUps()
    listener = started_listener(database_url, wakeups, sleep_interval=60)
    due_at = time.monotonic() + 0.3
    idle = [idle_beat(0, due_at), idle_beat(1, due_at), idle_beat(2)]
    try:
        serve(listener, idle, 0.25)
        assert tokens(wakeups) == 0
        serve(listener, idle, 0.1)
        assert time.monotonic() >= due_at and tokens(wakeups) == 1
        serve(listener, idle, 0.3)
        assert tokens(wakeups) == 0  # served: a published due time wakes one worker once
    finally:
        listener.close()


def test_after_losing_its_connection_the_listener_reconnects_and_wakes_a_worker(database_url, conn):
    wakeups = WakeUps()
    listener = started_listener(database_url, wakeups, sleep_interval=60)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'task-processor listener' "
                "AND datname = current_database()"
            )
        serve(listener, [idle_beat(0)], 1.5)
        assert listener.fds(), "reconnected"
        assert tokens(wakeups) >= 1  # notifications may have been lost meanwhile
    finally:
        listener.close()


def test_a_full_claim_wakes_one_more_worker_but_tokens_never_pile_up():
    wakeups = WakeUps()
    for _ in range(100):
        wakeups.ring_unless_pending()
    assert tokens(wakeups) == 1


def processor_connections(conn) -> dict[str, int]:
    """The processor's connections by application name, each with how many are listening: the
    listener's last statement is its LISTEN, or the update that asks for announcements once a
    worker waits (migration 0013)."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT application_name, count(*) FILTER (WHERE query = "
            "'LISTEN task_processor' OR query LIKE '%%SET awaits_tasks%%') "
            "FROM pg_stat_activity WHERE "
            "datname = current_database() AND application_name LIKE "
            "'task-processor %%' GROUP BY 1"
        )
        return dict(cursor.fetchall())


def test_an_idle_processor_has_one_listening_connection_and_its_workers_none(
    database_url, start_processor, conn
):
    processor = start_processor("--numthreads", "4", "--sleepintervalms", "100")
    processor.wait_ready(4)

    def connections():
        found = processor_connections(conn)
        workers = [name for name in found if name.startswith("task-processor worker")]
        return found if "task-processor listener" in found and workers else None

    found = wait_for(connections, message="the listener's and a worker's connections")
    assert found["task-processor listener"] == 1
    assert all(found[name] == 0 for name in found if name.startswith("task-processor worker"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_workers_connect_and_arm_their_fence_only_when_they_first_claim(
    database_url, start_processor, conn
):
    # No listening connection and no fallback poll within the test: only the first worker
    # of the start claims; the others have not taken a token, so they hold no connection and
    # no lease fence (its thread is a worker's only thread besides the main one).
    processor = start_processor(
        "--numthreads", "3", "--sleepintervalms", "60000", "--listen-database-url", "none"
    )
    wait_for(lambda: len(processor.worker_pids()) == 3, message="3 workers")

    def one_worker_connected():
        found = processor_connections(conn)
        return found if "task-processor worker 0" in found else None

    wait_for(one_worker_connected, message="the first worker's connection")
    time.sleep(1)  # the others had time to connect, had they claimed
    found = processor_connections(conn)
    assert sorted(name for name in found if "worker" in name) == ["task-processor worker 0"]
    rows = wait_for(lambda: len(processor.workers()) == 3 and processor.workers())
    pids = {slot: pid for slot, (pid, _, _) in rows.items()}
    assert [threads(pids[slot]) for slot in range(3)] == [2, 1, 1]
    processor.signal(signal.SIGTTIN)  # a worker started on its own claims at once
    wait_for(
        lambda: "task-processor worker 3" in processor_connections(conn),
        message="the added worker's connection",
    )
    assert not {"task-processor worker 1", "task-processor worker 2"} & set(
        processor_connections(conn)
    )
    rows = wait_for(lambda: 3 in processor.workers() and processor.workers())
    assert threads(rows[3][0]) == 2


def test_a_backlog_waiting_at_start_spreads_over_every_worker(
    database_url, start_processor, results
):
    # Only the first worker claims at start; the others connect when they are woken (by a full
    # claim, or by the announcement of tasks a busy worker hands back after a slow one): every
    # worker gets a share long before the first could have run them all (40 x 0.2 s), with no
    # fallback poll (a minute away).
    processor_tasks.sleep_then_record.delay_many(
        [{"args": (f"backlog-{n}", 0.2)} for n in range(40)]
    )
    processor = start_processor("--numthreads", "4", "--sleepintervalms", "60000")
    wait_for(
        lambda: task_states(database_url).get("succeeded") == 40,
        timeout=30,
        message="the backlog run",
    )
    workers = query(database_url, "SELECT DISTINCT worker FROM task_processor.runs")
    assert len(workers) == 4, workers
    assert processor.process.poll() is None


def test_a_task_enqueued_to_an_idle_processor_starts_long_before_the_fallback_poll(
    database_url, start_processor, results
):
    processor = start_processor("--numthreads", "3", "--sleepintervalms", "60000")
    processor.wait_ready(3)
    time.sleep(0.5)  # the workers' first claims are over: they wait for a token
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO task_processor.tasks (identifier, args) "
            "VALUES ('processor_tasks.record', '[\"woken\"]') RETURNING created_at"
        )
    start = time.monotonic()
    wait_for(lambda: results("woken"), timeout=10, message="the task to run")
    assert time.monotonic() - start < 5  # the fallback poll is a minute away


# -- announcing new tasks only to processors that wait for them (migration 0013) -------------


def waiting_beat(slot: int) -> Beat:
    return idle_beat(slot)._replace(state=WorkerState.WAITING)


def announced_after_insert(conn, listening) -> bool:
    """Insert one task; was it announced on ``listening``?"""
    listening.poll()
    listening.notifies.clear()
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO task_processor.tasks (identifier) VALUES ('t.announced')")
    select.select([listening], [], [], 0.3)
    listening.poll()
    return bool(listening.notifies)


def set_processor(conn, **columns) -> None:
    with conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO task_processor.processors (id, host, pid, num_workers, grace_period_ms) "
            "VALUES ('test-processor', 'h', 1, 1, 20000) ON CONFLICT (id) DO NOTHING"
        )
        for column, value in columns.items():
            cursor.execute(
                f"UPDATE task_processor.processors SET {column} = {value} "
                "WHERE id = 'test-processor'"
            )


@pytest.fixture
def listening(database_url):
    connection = psycopg2.connect(database_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("LISTEN task_processor")
    yield connection
    connection.close()


def test_an_insert_is_announced_only_while_a_live_processor_waits_for_tasks(conn, listening):
    assert not announced_after_insert(conn, listening)  # no processor at all
    set_processor(conn)  # awaits_tasks NULL: a processor of an earlier release hears of all
    assert announced_after_insert(conn, listening)
    set_processor(conn, awaits_tasks="false")  # every worker of it busy
    assert not announced_after_insert(conn, listening)
    set_processor(conn, awaits_tasks="true")
    assert announced_after_insert(conn, listening)
    set_processor(conn, last_beat_at="now() - interval '21 seconds'")  # silent past its grace
    assert not announced_after_insert(conn, listening)
    set_processor(conn, last_beat_at="now()", state="'stopped'")
    assert not announced_after_insert(conn, listening)


def awaits_tasks(conn, pid: int | None = None) -> bool | None:
    """What the row of the processor with ``pid`` (None: the test's own row) says."""
    with conn.cursor() as cursor:
        if pid is None:
            cursor.execute(
                "SELECT awaits_tasks FROM task_processor.processors WHERE id = 'test-processor'"
            )
        else:
            cursor.execute(
                "SELECT awaits_tasks FROM task_processor.processors WHERE pid = %s", (pid,)
            )
        return cursor.fetchone()[0]


def test_the_listener_asks_for_announcements_while_a_worker_waits_and_claims_twice(
    database_url, conn
):
    set_processor(conn)
    wakeups = WakeUps()
    listener = started_listener(database_url, wakeups, sleep_interval=60)
    try:
        serve(listener, [idle_beat(0), idle_beat(1)], 0.2)  # between batches: not waiting
        assert awaits_tasks(conn) is None and tokens(wakeups) == 0
        serve(listener, [waiting_beat(0), idle_beat(1)], 0.01)
        assert awaits_tasks(conn) is True
        assert tokens(wakeups) == 1  # the claim for what was inserted just before
        serve(listener, [waiting_beat(0), idle_beat(1)], RECHECK_AFTER + 0.1)
        assert tokens(wakeups) == 1  # and the second, for what was still committing
        serve(listener, [idle_beat(1)], QUIET_AFTER / 2)
        assert awaits_tasks(conn) is True  # a short spell of work changes nothing
        serve(listener, [], QUIET_AFTER + 0.2)
        assert awaits_tasks(conn) is False
        assert tokens(wakeups) == 0
    finally:
        listener.close()


def test_a_second_claim_falling_due_while_every_worker_is_busy_is_dropped(database_url, conn):
    set_processor(conn)
    wakeups = WakeUps()
    listener = started_listener(database_url, wakeups, sleep_interval=60)
    try:
        serve(listener, [waiting_beat(0)], 0.01)
        assert tokens(wakeups) == 1
        time.sleep(RECHECK_AFTER + 0.01)
        listener.tend(False, [])  # the worker took a task meanwhile: it claims after it
        assert tokens(wakeups) == 0
        assert listener.timeout(time.monotonic(), []) > 1  # no moment left due: no busy loop
    finally:
        listener.close()


def test_a_listener_whose_role_may_not_update_its_row_keeps_listening(database_url, conn, caplog):
    role = f"tp_listen_only_{uuid.uuid4().hex[:8]}"
    set_processor(conn)
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} LOGIN")
        cursor.execute(f"GRANT USAGE ON SCHEMA task_processor TO {role}")
    wakeups = WakeUps()
    listener = started_listener(database_url.replace("postgres@", f"{role}@"), wakeups, 60)
    try:
        serve(listener, [waiting_beat(0)], 0.05)
        assert listener.fds(), "still listening"
        assert awaits_tasks(conn) is None  # says nothing: every insert is announced to it
        assert "let the role of the listening connection UPDATE" in caplog.text
        tokens(wakeups)
        with conn.cursor() as cursor:
            cursor.execute("NOTIFY task_processor")
        serve(listener, [waiting_beat(0)], 0.5)
        assert tokens(wakeups) == 1
        assert caplog.text.count("cannot record") == 1  # said once, not at every turn
    finally:
        listener.close()
        with conn.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


def test_a_busy_processor_is_not_told_of_new_tasks_and_misses_none_when_it_waits_again(
    database_url, start_processor, results, conn
):
    processor = start_processor("--numthreads", "1", "--sleepintervalms", "60000")
    processor.wait_ready(1)
    processor_tasks.sleep_then_record.delay(args=("busy", 2 * QUIET_AFTER + 1))

    def own_flag():
        return awaits_tasks(conn, processor.pid)

    wait_for(lambda: own_flag() is False, message="the busy processor asking for no NOTIFY")
    processor_tasks.record.delay(args=("queued while busy",))  # announced to nobody
    wait_for(lambda: results("queued while busy"), timeout=20, message="the task queued meanwhile")
    wait_for(lambda: own_flag() is True, message="the waiting processor asking again")
    start = time.monotonic()
    processor_tasks.record.delay(args=("after",))
    wait_for(lambda: results("after"), timeout=10, message="the next task")
    assert time.monotonic() - start < 5  # announced: the fallback poll is a minute away


def test_a_processor_that_only_polls_asks_for_no_announcements(database_url, start_processor, conn):
    processor = start_processor("--numthreads", "1", "--listen-database-url", "none")
    processor.wait_ready(1)
    assert awaits_tasks(conn, processor.pid) is False


def test_a_reload_applies_a_new_sleep_interval_and_listening_url(
    database_url, start_processor, results, conn, tmp_path
):
    """The fallback poll and the listening connection belong to the supervisor, which outlives
    a reload: SIGHUP must hand them the new --sleepintervalms and --listen-database-url, as it
    hands the new settings to the workers it starts."""
    config = tmp_path / "processor.conf"

    def idle_worker_other_than(before: set[int]) -> None:
        # Not wait_ready(): the start-up work it waits for would wait a minute for the poll.
        wait_for(
            lambda: (
                (rows := processor.workers())
                and all(pid not in before and state == "idle" for pid, state, _ in rows.values())
            ),
            message="a new worker, idle",
        )

    def reload(text: str) -> None:
        before = set(processor.worker_pids())
        config.write_text(text)
        processor.signal(signal.SIGHUP)
        idle_worker_other_than(before)

    def picked_up_within(key: str, seconds: float) -> bool:
        processor_tasks.record.delay(args=(key,))
        started = time.monotonic()
        wait_for(lambda: results(key), timeout=30, message=key)
        return time.monotonic() - started < seconds

    config.write_text("numthreads = 1\nsleepintervalms = 60000\nlisten-database-url = none\n")
    processor = start_processor("--config", str(config))
    idle_worker_other_than(set())

    reload("numthreads = 1\nsleepintervalms = 200\nlisten-database-url = none\n")
    assert picked_up_within("polled every 200 ms", 5)  # not the minute the start asked for

    reload("numthreads = 1\nsleepintervalms = 60000\n")  # listens on the queue's URL again
    wait_for(
        lambda: awaits_tasks(conn, processor.pid) is True,
        message="the processor asking for announcements",
    )
    assert picked_up_within("announced", 5)

    reload("numthreads = 1\nsleepintervalms = 60000\nlisten-database-url = none\n")
    wait_for(
        lambda: awaits_tasks(conn, processor.pid) is False,
        timeout=20,
        message="polling only, told nothing",
    )
    assert "listening on nothing: polling only" in processor.log_text()
