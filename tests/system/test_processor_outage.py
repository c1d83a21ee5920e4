"""The database goes away and comes back; a processor on another host is lost."""

from __future__ import annotations

import signal
import time

import processor_tasks
import pytest
from harness import query, task_states, wait_for
from tcp_proxy import TcpProxy


@pytest.fixture
def proxy():
    tcp_proxy = TcpProxy()
    yield tcp_proxy
    tcp_proxy.cut()


def test_database_outage_is_not_a_crash_loop(database_url, start_processor, proxy, results):
    processor = start_processor(
        "--numthreads",
        "2",
        "--graceperiodms",
        "2000",
        env={"DATABASE_URL": proxy.url(database_url)},
    )
    workers = processor.wait_ready(2)
    proxy.cut()
    time.sleep(6)  # three grace periods, several reconnect attempts
    assert processor.process.poll() is None
    assert processor.worker_pids() == workers  # waiting for the database is not being stuck
    proxy.restore()
    processor_tasks.record.delay_many([{"args": (f"back{i}",)} for i in range(5)])
    wait_for(lambda: task_states(database_url).get("succeeded") == 5, timeout=30)
    assert "database unavailable" in processor.log_text()


def test_busy_worker_is_stopped_when_its_lease_cannot_be_renewed(
    database_url, start_processor, proxy, results
):
    processor = start_processor(
        "--numthreads", "1", "--lease-seconds", "4", env={"DATABASE_URL": proxy.url(database_url)}
    )
    (worker,) = processor.wait_ready(1)
    task_id = processor_tasks.sleep_then_record.delay(args=("fenced", 6))
    wait_for(lambda: results("fenced:started"))
    proxy.cut()
    # Past 3/4 of the lease without renewal: killed, so nobody else can run it twice.
    wait_for(
        lambda: worker not in processor.worker_pids(),
        timeout=10,
        message="the busy worker to be killed",
    )
    proxy.restore()
    wait_for(
        lambda: (
            query(database_url, "SELECT state FROM task_processor.tasks WHERE id = %s", (task_id,))
            == [("succeeded",)]
        ),
        timeout=40,
    )
    runs = query(
        database_url,
        "SELECT result, error FROM task_processor.runs WHERE task_id = %s ORDER BY id",
        (task_id,),
    )
    assert [result for result, _ in runs] == ["worker_lost", "success"]
    assert "lease could not be renewed" in runs[0][1]


def test_expired_lease_of_a_lost_host_is_requeued(database_url, start_processor, conn, results):
    with conn.cursor() as cursor:
        cursor.execute("""
            INSERT INTO task_processor.tasks
                (identifier, args, state, attempts, lease_owner, lease_expires_at)
            VALUES ('processor_tasks.record', '["lost"]', 'running', 1,
                    'elsewhere-1-abcdef/0.1', now() - interval '1 second')
            RETURNING id""")
        task_id = cursor.fetchone()[0]
    start_processor("--numthreads", "1").wait_ready(1)
    wait_for(lambda: results("lost"), timeout=20, message="the lost task to run again")
    runs = query(
        database_url,
        "SELECT attempt, result, error FROM task_processor.runs WHERE task_id = %s ORDER BY id",
        (task_id,),
    )
    assert [(attempt, result) for attempt, result, _ in runs] == [
        (1, "worker_lost"),
        (2, "success"),
    ]
    assert "lease expired" in runs[0][2] and "elsewhere-1-abcdef/0.1" in runs[0][2]


def test_memory_limit_recycles_workers_between_tasks(database_url, start_processor):
    processor = start_processor("--numthreads", "1", "--max-worker-memory-mb", "1")
    processor.wait_ready(1)
    processor_tasks.noop.delay_many([{} for _ in range(4)])
    wait_for(lambda: task_states(database_url).get("succeeded") == 4)
    workers = query(
        database_url,
        "SELECT count(DISTINCT worker) FROM task_processor.runs r "
        "JOIN task_processor.tasks t ON t.id = r.task_id "
        "WHERE t.identifier = 'processor_tasks.noop'",
    )
    assert workers == [(4,)]  # every worker went after its first task
    assert "recycling" in processor.log_text()


def test_a_claim_whose_answer_was_lost_is_given_back(database_url, start_processor, proxy, results):
    processor = start_processor(
        "--numthreads",
        "1",
        "--sleepintervalms",
        "200",
        env={"DATABASE_URL": proxy.url(database_url)},
    )
    processor.wait_ready(1)
    wait_for(
        lambda: (
            not query(database_url, "SELECT 1 FROM task_processor.tasks WHERE state = 'running'")
        ),
        message="the built-in start-up tasks to finish",
    )

    def state(task_id: int) -> str:
        return query(
            database_url, "SELECT state FROM task_processor.tasks WHERE id = %s", (task_id,)
        )[0][0]

    for attempt in range(5):  # the worker may poll between the two steps: then once more
        proxy.drop_replies()  # the next claim commits on the server; its answer never arrives
        key = f"orphan{attempt}"
        task_id = query(
            database_url,
            "INSERT INTO task_processor.tasks (identifier, args) "
            "VALUES ('processor_tasks.record', %s) RETURNING id",
            (f'["{key}"]',),
        )[0][0]
        deadline = time.monotonic() + 3
        while state(task_id) != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        claimed_in_the_dark = state(task_id) == "running"
        proxy.cut()
        proxy.restore()
        if claimed_in_the_dark:
            break
        # Not this time: the worker reconnects and runs it; then try again.
        wait_for(lambda task_id=task_id: state(task_id) == "succeeded", timeout=20)
    else:
        raise AssertionError("no claim committed while its answer was being dropped")
    wait_for(lambda: results(key), timeout=20, message="the orphaned task to run")
    runs = query(
        database_url,
        "SELECT attempt, result FROM task_processor.runs WHERE task_id = %s",
        (task_id,),
    )
    assert runs == [(1, "success")]  # the lost claim did not cost an attempt


def test_a_supervisor_paused_past_its_lease_stops_its_workers(
    database_url, start_processor, results
):
    processor = start_processor("--numthreads", "1", "--lease-seconds", "4")
    (worker,) = processor.wait_ready(1)
    task_id = processor_tasks.sleep_then_record.delay(args=("paused supervisor", 8))
    wait_for(lambda: results("paused supervisor:started"))
    processor.signal(signal.SIGSTOP)  # no renewal for longer than the lease
    time.sleep(4.5)
    processor.signal(signal.SIGCONT)
    wait_for(
        lambda: worker not in processor.worker_pids(),
        timeout=10,
        message="the worker whose lease lapsed to be stopped",
    )
    runs = wait_for(
        lambda: query(
            database_url,
            "SELECT result, error FROM task_processor.runs WHERE task_id = %s",
            (task_id,),
        )
    )
    # "renewed too late"; or, if the pause fell in a statement, "could not be renewed"
    assert runs[0][0] == "worker_lost" and "renewed" in runs[0][1]


def test_a_database_that_stops_answering_never_blocks_the_supervisor(
    database_url, start_processor, proxy
):
    processor = start_processor(
        "--numthreads",
        "1",
        "--lease-seconds",
        "8",
        "--drain-timeout",
        "2",
        env={"DATABASE_URL": proxy.url(database_url)},
    )
    processor.wait_ready(1)
    proxy.drop_replies()  # the server takes every request and never answers
    # A beat went unanswered: the supervisor cut the connection after its deadline.
    wait_for(
        lambda: "database: " in processor.log_text(),
        timeout=20,
        message="the supervisor to give up on an unanswered statement",
    )
    processor.signal(signal.SIGTERM)
    assert processor.wait(20) == 0  # its loop still ran: it drained and stopped
