"""The processor's one listening connection and the wake-up tokens of its idle workers: a real
database, a real pipe, the supervisor's own Listener class, and a running processor."""

from __future__ import annotations

import select
import time

import psycopg2
from harness import wait_for

from supervisor.listener import Listener
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
    listener = Listener(database_url, sleep_interval, 5.0, wakeups)
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


def test_an_idle_processor_has_one_listening_connection_and_its_workers_none(
    database_url, start_processor, conn
):
    processor = start_processor("--numthreads", "4", "--sleepintervalms", "100")
    processor.wait_ready(4)

    def connections():
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT application_name, count(*) FILTER (WHERE query = "
                "'LISTEN task_processor') FROM pg_stat_activity WHERE "
                "datname = current_database() AND application_name LIKE "
                "'task-processor %%' GROUP BY 1"
            )
            found = dict(cursor.fetchall())
        return found if len(found) == 6 else None  # supervisor, listener, 4 workers

    found = wait_for(connections, message="the processor's connections")
    assert found["task-processor listener"] == 1
    assert all(found[f"task-processor worker {slot}"] == 0 for slot in range(4))


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
