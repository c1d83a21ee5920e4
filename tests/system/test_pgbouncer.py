"""Behind PgBouncer, in transaction and in session pooling mode: migrations, the processor
(claims, recording, lease renewal, requeues, the recurring clean-up, wake-ups), check-health,
run-api and the application's ``.delay()`` all go through a real pgbouncer, and behave as on a
direct connection."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import processor_tasks
import psycopg2
import pytest
from api_support import api_server, check_health
from commands import admin
from harness import Processor, query, task_states, wait_for
from pgbouncer import PgBouncer, missing
from processor_tasks import RESULTS_TABLE

from common import enqueue
from common.tasks import register_task_handler

pytestmark = pytest.mark.slow

QUEUE_SIZE, CALLERS = 4, 12


@register_task_handler(queue_size=QUEUE_SIZE)
def limited(number: int) -> None:
    """Never run here: the tests only count what is queued."""


@contextmanager
def running_bouncer(pool_mode: str, reset_always: bool = False) -> Iterator[PgBouncer]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    bouncer = PgBouncer(pool_mode, reset_always=reset_always)
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture(params=["transaction", "session"])
def bouncer(request) -> Iterator[PgBouncer]:
    with running_bouncer(request.param) as bouncer:
        yield bouncer


def name_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@pytest.mark.parametrize(
    ("pool_mode", "listen"),
    [
        ("transaction", "direct"),  # the recommended set-up: LISTEN past the pooler
        ("transaction", "none"),  # no direct connection: polling only
        ("session", "pooled"),  # session pooling keeps LISTEN working through the pooler
    ],
)
def test_processor_migrations_and_health_through_pgbouncer(
    pool_mode, listen, empty_database_url, tmp_path, monkeypatch
):
    with running_bouncer(pool_mode) as bouncer:
        pooled = bouncer.url(name_of(empty_database_url))
        migrated = admin("migrate", DATABASE_URL=pooled)
        assert migrated.returncode == 0, migrated.stderr
        query(empty_database_url, RESULTS_TABLE)

        # With the poll (and so the grace period) far off, only a notification can make an
        # idle worker claim within the test's time: wake-ups are proven to arrive.
        waits = (
            ["--sleepintervalms", "300"]
            if listen == "none"
            else ["--sleepintervalms", "600000", "--graceperiodms", "600000"]
        )
        listen_url = {"direct": empty_database_url, "none": "none", "pooled": pooled}[listen]
        processor = Processor(
            pooled,
            tmp_path / "processor.log",
            "--numthreads",
            "2",
            "--lease-seconds",
            "3",
            "--listen-database-url",
            listen_url,
            *waits,
        )
        try:
            processor.wait_ready(2, timeout=60)  # the recurring clean-up ran, through it
            assert bouncer.clients(name_of(pooled)) >= 2  # the supervisor and a worker

            monkeypatch.setenv("DATABASE_URL", pooled)
            monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
            processor_tasks.record.delay_many([{"args": (f"task-{n}",)} for n in range(50)])
            # Outlives its lease of 3 s: renewed through the pooler, it is never taken away.
            renewed = processor_tasks.sleep_then_record.delay(args=("renewed", 4.5))
            wait_for(
                lambda: task_states(pooled) == {"succeeded": 51},
                timeout=90,
                message="every task run",
            )
            # The first full claim woke the second worker, which connected to claim.
            assert bouncer.clients(name_of(pooled)) >= 3
            assert query(
                pooled, "SELECT attempts FROM task_processor.tasks WHERE id = %s", (renewed,)
            ) == [(1,)]
            assert query(
                pooled, "SELECT count(*) FROM task_processor.runs WHERE result <> 'success'"
            ) == [(0,)]

            # A worker killed mid-task: its supervisor gives the task back through the pooler.
            killed = processor_tasks.sleep_then_record.delay(args=("killed", 600))
            pid = wait_for(
                lambda: query(pooled, "SELECT pid FROM test_results WHERE key = 'killed:started'"),
                timeout=60,
                message="the long task started",
            )[0][0]
            os.kill(pid, signal.SIGKILL)
            wait_for(
                lambda: (
                    query(
                        pooled, "SELECT attempts FROM task_processor.tasks WHERE id = %s", (killed,)
                    )
                    == [(2,)]
                ),
                timeout=60,
                message="the killed task requeued and started again",
            )

            health = check_health(pooled, "--all")
            assert health.returncode == 0, health.stdout + health.stderr
            with api_server(pooled) as api:
                status, _, body = api.get("/health")
            assert status == 200, body
        finally:
            processor.stop()
            enqueue.close_own_connection()


def test_queue_size_is_exact_through_pgbouncer(bouncer, database_url, monkeypatch):
    pooled = bouncer.url(name_of(database_url))
    monkeypatch.setenv("DATABASE_URL", pooled)
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    start = threading.Barrier(CALLERS)
    ids: list[int | None] = []

    def call(number: int) -> None:
        start.wait()
        try:
            ids.append(limited.delay(args=(number,)))
        finally:
            enqueue.close_own_connection()

    threads = [threading.Thread(target=call, args=(n,)) for n in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(ids) == CALLERS
    assert sum(task_id is not None for task_id in ids) == QUEUE_SIZE
    assert query(database_url, "SELECT count(*) FROM task_processor.tasks") == [(QUEUE_SIZE,)]


def test_enqueue_in_the_callers_transaction_through_pgbouncer(bouncer, database_url, monkeypatch):
    pooled = bouncer.url(name_of(database_url))
    monkeypatch.setenv("DATABASE_URL", pooled)
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    query(database_url, "CREATE TABLE orders (id integer)")
    caller = psycopg2.connect(pooled)
    try:
        for outcome in ("rolled back", "committed"):
            with caller.cursor() as cursor:
                cursor.execute("INSERT INTO orders VALUES (1)")
            task_id = limited.delay(args=(1,), connection=caller)
            assert task_id is not None
            # Not visible to others before the caller commits: it is in the caller's
            # transaction, on the same server connection whatever the pooler does.
            assert query(database_url, "SELECT count(*) FROM task_processor.tasks") == [(0,)]
            caller.rollback() if outcome == "rolled back" else caller.commit()
        assert query(database_url, "SELECT count(*) FROM orders") == [(1,)]
        assert query(database_url, "SELECT id FROM task_processor.tasks") == [(task_id,)]
    finally:
        caller.close()


def test_prepared_statements_a_pooler_loses_fall_back_to_plain_text(
    empty_database_url, tmp_path, monkeypatch, caplog
):
    """A pooler that resets its server connections after every transaction loses every
    prepared statement: the workers and .delay() go on with plain statements, and every task
    runs."""
    with running_bouncer("transaction", reset_always=True) as bouncer:
        pooled = bouncer.url(name_of(empty_database_url))
        assert admin("migrate", DATABASE_URL=pooled).returncode == 0
        query(empty_database_url, RESULTS_TABLE)
        processor = Processor(
            pooled,
            tmp_path / "processor.log",
            "--numthreads",
            "2",
            "--listen-database-url",
            empty_database_url,
        )
        try:
            processor.wait_ready(2, timeout=60)
            monkeypatch.setenv("DATABASE_URL", pooled)
            monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
            with caplog.at_level("INFO", logger="common.enqueue"):
                for n in range(20):
                    processor_tasks.record.delay(args=(f"task-{n}",))
            wait_for(
                lambda: task_states(pooled) == {"succeeded": 20},
                timeout=60,
                message="every task run",
            )
            assert "does not keep prepared statements" in caplog.text
            assert "does not keep prepared statements" in processor.log_text()
        finally:
            enqueue.close_own_connection()
            processor.stop()
