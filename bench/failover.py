"""What a PostgreSQL failover costs: the time until the processor runs tasks on the promoted
standby, and, with asynchronous replication, how many tasks whose enqueue returned an id are
missing afterwards.

    python3 bench/failover.py [--replication async|sync] [--producers 4] [--rounds 3]

Each round starts a private primary and streaming standby (PostgreSQL's own programs, as the
postgres user when run as root), a processor and producer threads on a multi-host URL
(``target_session_attrs=read-write``), stops the primary with ``pg_ctl -m immediate`` while the
producers enqueue as fast as they can, promotes the standby, and counts. Prints one line per
round; a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH.parent / "tests" / "support")]

import processor_tasks  # noqa: E402
import psycopg2  # noqa: E402
from clusters import Cluster  # noqa: E402
from commands import admin  # noqa: E402
from harness import Processor, query, wait_for  # noqa: E402
from processor_tasks import RESULTS_TABLE  # noqa: E402

from common import db, enqueue  # noqa: E402


class Producer(threading.Thread):
    """Enqueues as fast as it can; keeps the ids it was given, and when each came back."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.given: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                task_id = processor_tasks.noop.delay()
            except (db.DatabaseUnavailable, psycopg2.Error):
                time.sleep(0.05)
                continue
            if task_id is not None:
                self.given.append((time.monotonic(), task_id))
        enqueue.close_own_connection()


def one_round(replication: str, producers: int) -> str:
    sync = {"synchronous_standby_names": "'standby'"} if replication == "sync" else {}
    primary = Cluster("bench-primary").init_primary(sync).start()
    standby = Cluster("bench-standby").init_standby_of(primary, {"synchronous_standby_names": "''"})
    threads: list[Producer] = []
    processor = None
    try:
        standby.start()
        wait_for(
            lambda: primary.query("SELECT count(*) FROM pg_stat_replication")[0][0] == 1,
            timeout=30,
            message="the standby streaming",
        )
        url = (
            f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
            f"/postgres?target_session_attrs=read-write"
        )
        admin("migrate", DATABASE_URL=url)
        query(url, RESULTS_TABLE)
        os.environ.update(DATABASE_URL=url, TASK_RUN_METHOD="TASK_PROCESSOR")
        log = Path(tempfile.mkdtemp(prefix="tp-failover-")) / "processor.log"
        processor = Processor(url, log, "--numthreads", "2")
        processor.wait_ready(2, timeout=60)
        threads = [Producer() for _ in range(producers)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        stopped_at = time.monotonic()
        primary.stop("immediate")
        standby.promote()
        wait_for(
            lambda: any(at > stopped_at for thread in threads for at, _ in thread.given),
            timeout=60,
            message="an enqueue on the new primary",
        )
        first_new = min(
            task_id for thread in threads for at, task_id in thread.given if at > stopped_at
        )
        wait_for(
            lambda: (
                query(
                    standby.url,
                    "SELECT count(*) FROM task_processor.tasks WHERE "
                    "id >= %s AND state = 'succeeded'",
                    (first_new,),
                )[0][0]
                > 0
            ),
            timeout=60,
            message="a task run on the new primary",
        )
        recovered = time.monotonic() - stopped_at
        for thread in threads:
            thread.stop.set()
        for thread in threads:
            thread.join(30)
        before = [task_id for thread in threads for at, task_id in thread.given if at <= stopped_at]
        present = query(
            standby.url, "SELECT count(*) FROM task_processor.tasks WHERE id = ANY(%s)", (before,)
        )[0][0]
        return (
            f"{replication}: {len(before)} enqueues returned an id before the primary "
            f"stopped; {len(before) - present} of them missing on the promoted standby; "
            f"the processor ran a new task {recovered:.1f} s after the stop"
        )
    finally:
        for thread in threads:
            thread.stop.set()
        if processor is not None:
            processor.stop()
        standby.stop(remove=True)
        primary.stop(remove=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replication", choices=("async", "sync"), default="async")
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    for number in range(1, options.rounds + 1):
        print(f"round {number}: {one_round(options.replication, options.producers)}", flush=True)


if __name__ == "__main__":
    main()
