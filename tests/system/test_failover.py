"""PostgreSQL failover: a primary and a synchronous streaming standby of the test's own, a
processor and an enqueuing application given a multi-host URL. The primary is stopped
mid-drain and the standby promoted: both follow the new primary on their own, and every task
whose enqueue returned an id before the failover runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import processor_tasks
import psycopg2
import pytest
from clusters import Cluster, server_programs_missing
from commands import admin
from harness import Processor, query, wait_for
from processor_tasks import RESULTS_TABLE

from common import db, enqueue

pytestmark = pytest.mark.slow


@pytest.fixture
def replicated() -> Iterator[tuple[Cluster, Cluster]]:
    missing = server_programs_missing()
    if missing:
        pytest.skip(missing)
    primary = (
        Cluster("primary")
        .init_primary({"synchronous_standby_names": "'standby'", "synchronous_commit": "on"})
        .start()
    )
    # Promoted, the standby has no standby of its own: it must not wait for one at commit.
    standby = Cluster("standby").init_standby_of(primary, {"synchronous_standby_names": "''"})
    try:
        standby.start()
        wait_for(
            lambda: primary.query("SELECT sync_state FROM pg_stat_replication") == [("sync",)],
            timeout=30,
            message="a synchronous standby",
        )
        yield primary, standby
    finally:
        standby.stop(remove=True)
        primary.stop(remove=True)


class Enqueuer(threading.Thread):
    """An application enqueueing steadily; it keeps the ids it was given and rides out the
    failover by retrying what raised."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.ids: list[int] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        count = 0
        while not self.stop.is_set():
            try:
                task_id = processor_tasks.record.delay(args=(f"task-{count}",))
            except (db.DatabaseUnavailable, psycopg2.Error):
                self.errors += 1
                time.sleep(0.1)
                continue
            assert task_id is not None
            self.ids.append(task_id)
            count += 1
            time.sleep(0.01)
        enqueue.close_own_connection()


def succeeded(url: str, ids: list[int]) -> int:
    return query(
        url,
        "SELECT count(*) FROM task_processor.tasks WHERE id = ANY(%s) AND state = 'succeeded'",
        (ids,),
    )[0][0]


def test_processor_and_application_follow_a_promoted_standby(replicated, tmp_path, monkeypatch):
    primary, standby = replicated
    url = (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
        f"/postgres?target_session_attrs=read-write"
    )
    assert admin("migrate", DATABASE_URL=url).returncode == 0
    query(url, RESULTS_TABLE)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    processor = Processor(url, tmp_path / "processor.log", "--numthreads", "2")
    enqueuer = Enqueuer()
    try:
        processor.wait_ready(2, timeout=60)
        enqueuer.start()
        wait_for(
            lambda: len(enqueuer.ids) >= 100 and succeeded(url, enqueuer.ids[:50]) == 50,
            timeout=60,
            message="a drain under way",
        )
        before_failover = list(enqueuer.ids)

        failed_at = time.monotonic()
        primary.stop("immediate")
        standby.promote()
        new_primary = standby.url
        after = wait_for(
            lambda: len(enqueuer.ids) > len(before_failover) and enqueuer.ids[-1],
            timeout=60,
            message="the application enqueueing on the new primary",
        )
        wait_for(
            lambda: succeeded(new_primary, [after]) == 1,
            timeout=60,
            message="the processor running a task on the new primary",
        )
        recovered_in = time.monotonic() - failed_at

        enqueuer.stop.set()
        enqueuer.join(30)
        wait_for(
            lambda: succeeded(new_primary, enqueuer.ids) == len(enqueuer.ids),
            timeout=90,
            message="every enqueued task run",
        )
    finally:
        enqueuer.stop.set()
        enqueuer.join(30)
        log = processor.log_text()
        processor.stop()
    # Synchronous replication: nothing the application was given an id for is lost.
    assert succeeded(new_primary, before_failover) == len(before_failover)
    keys = query(new_primary, "SELECT count(DISTINCT key) FROM test_results")[0][0]
    assert keys == len(enqueuer.ids)
    assert "Traceback" not in log
    print(
        f"failover: the processor ran a new task {recovered_in:.1f} s after the primary "
        f"stopped; the application retried {enqueuer.errors} enqueues meanwhile"
    )
