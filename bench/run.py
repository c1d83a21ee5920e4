"""Measure the processor on this machine and print the numbers.

    python3 bench/run.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Creates a database of its own, runs ``run-task-processor --numthreads 5 --tasks bench_tasks``
with every other option at its default, and reports: drain throughput, single-producer
``.delay()`` rate, bulk enqueue rate, pickup latency p50/p99 at a steady rate, the SQL
statements per second of an idle processor, the memory (PSS) of supervisor plus workers, and
how soon a killed worker's task is claimed again. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg2

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from common import enqueue, migrations  # noqa: E402


def connect(url: str):
    connection = psycopg2.connect(url)
    connection.autocommit = True
    return connection


def scalar(connection, sql: str, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def processor_command(*options: str, numthreads: int = 5, preload: str | None = None) -> list[str]:
    """``run-task-processor`` running the bench tasks, from the checkout on ``PYTHONPATH``;
    ``preload``: a module imported before the processor's own (``fork_census``)."""
    if preload is None:
        start = ["-m", "supervisor.cli"]
    else:
        start = [
            "-c",
            (
                f"import {preload}, runpy; runpy.run_module('supervisor.cli', "
                "run_name='__main__', alter_sys=True)"
            ),
        ]
    return [
        sys.executable,
        *start,
        "--tasks",
        "bench_tasks",
        "--numthreads",
        str(numthreads),
        *options,
    ]


def wait_until(predicate, timeout: float, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(interval)


class Bench:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"tp_bench_{uuid.uuid4().hex[:8]}"
        with connect(admin_url).cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{self.name}"')
        self.url = urlunsplit(urlsplit(admin_url)._replace(path="/" + self.name))
        os.environ["DATABASE_URL"] = self.url
        os.environ["TASK_RUN_METHOD"] = "TASK_PROCESSOR"
        migrations.migrate(connect(self.url))
        self.db = connect(self.url)
        self.processor: subprocess.Popen | None = None
        import bench_tasks

        self.tasks = bench_tasks

    def start_processor(self, wait: bool = True, preload: str | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO)])}
        self.processor = subprocess.Popen(
            processor_command(preload=preload),
            cwd=REPO,
            env=env,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if wait:
            wait_until(
                lambda: (
                    scalar(
                        self.db, "SELECT count(*) FROM task_processor.workers WHERE state = 'idle'"
                    )
                    == 5
                ),
                30,
            )

    def stop_processor(self) -> None:
        if self.processor is not None:
            self.processor.send_signal(signal.SIGTERM)
            self.processor.wait(60)
            self.processor = None

    def count(self, state: str) -> int:
        return scalar(
            self.db,
            "SELECT count(*) FROM task_processor.tasks WHERE state = %s "
            "AND identifier LIKE 'bench_tasks.%%'",
            (state,),
        )

    def clear(self) -> None:
        with self.db.cursor() as cursor:
            cursor.execute("TRUNCATE task_processor.tasks, task_processor.runs")

    # -- the measurements ----------------------------------------------------------------------

    def delay_rate(self, n: int = 3000) -> float:
        self.tasks.noop.delay()  # connect first
        start = time.perf_counter()
        for _ in range(n):
            self.tasks.noop.delay()
        return n / (time.perf_counter() - start)

    def bulk_rate(self, n: int = 50_000, chunk: int = 10_000) -> float:
        calls = [{}] * chunk
        start = time.perf_counter()
        for _ in range(n // chunk):
            self.tasks.noop.delay_many(calls)
        return n / (time.perf_counter() - start)

    def drain_rate(self, n: int = 30_000) -> float:
        self.tasks.noop.delay_many([{}] * n)
        start = time.perf_counter()  # the processor's start-up is part of the drain
        self.start_processor(wait=False)
        wait_until(lambda: self.count("succeeded") >= n, 300, 0.02)
        return n / (time.perf_counter() - start)

    def drain_rate_running(self, n: int = 30_000) -> float:
        """Bulk enqueue into an idle, running processor, timed from the commit."""
        self.tasks.noop.delay_many([{}] * n)
        start = time.perf_counter()
        wait_until(lambda: self.count("succeeded") >= n, 300, 0.02)
        return n / (time.perf_counter() - start)

    def pickup_latency(self, rate: float = 20.0, seconds: float = 10.0) -> tuple[float, float]:
        ids = []
        for _ in range(int(rate * seconds)):
            ids.append(self.tasks.noop.delay())
            time.sleep(1 / rate)
        wait_until(lambda: self.count("succeeded") >= len(ids), 30)
        with self.db.cursor() as cursor:
            cursor.execute(
                """
                SELECT extract(epoch FROM r.started_at - t.created_at) * 1000
                FROM task_processor.runs r JOIN task_processor.tasks t ON t.id = r.task_id
                WHERE t.id = ANY(%s)""",
                (ids,),
            )
            latencies = sorted(row[0] for row in cursor.fetchall())
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        return statistics.median(latencies), p99

    def idle_statements(self, seconds: float = 30.0) -> tuple[float, int]:
        admin = connect(self.admin_url)

        def totals():
            with admin.cursor() as cursor:
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                    (self.name,),
                )
                transactions = cursor.fetchone()[0]
            with self.db.cursor() as cursor:
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) "
                    "FROM pg_stat_user_tables WHERE schemaname = 'task_processor' "
                    "AND relname IN ('tasks', 'runs', 'recurring_tasks')"
                )
                writes = int(cursor.fetchone()[0])
            return transactions, writes

        time.sleep(12)  # idle backends flush their statistics within 10 s
        before, writes_before = totals()
        time.sleep(seconds)
        after, writes_after = totals()
        own = 4  # this method's own statements on the bench database between the readings
        return (after - before - own) / seconds, writes_after - writes_before

    def pss_mib(self) -> float:
        supervisor = psutil.Process(self.processor.pid)
        processes = [supervisor, *supervisor.children()]
        return sum(p.memory_full_info().pss for p in processes) / (1024 * 1024)

    def requeue_after_kill(self) -> float:
        task_id = self.tasks.sleep.delay(args=(3,))
        wait_until(
            lambda: (
                scalar(
                    self.db,
                    "SELECT count(*) FROM task_processor.workers "
                    "WHERE task_id = %s AND state = 'busy'",
                    (task_id,),
                )
                == 1
            ),
            10,
        )
        time.sleep(0.2)
        pid = scalar(
            self.db, "SELECT pid FROM task_processor.workers WHERE task_id = %s", (task_id,)
        )
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: (
                scalar(
                    self.db,
                    "SELECT count(*) FROM task_processor.runs WHERE task_id = %s",
                    (task_id,),
                )
                >= 1
            ),
            10,
        )
        wait_until(
            lambda: (
                scalar(
                    self.db, "SELECT attempts FROM task_processor.tasks WHERE id = %s", (task_id,)
                )
                >= 2
            ),
            10,
            0.002,
        )
        return time.time() - killed_at

    def close(self) -> None:
        self.stop_processor()
        enqueue.close_own_connection()
        self.db.close()
        with connect(self.admin_url).cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--drain", type=int, default=30_000, help="tasks in the drain runs")
    arguments = parser.parse_args()
    bench = Bench(arguments.admin_url)
    try:
        print(f"single-producer .delay():      {bench.delay_rate():8.0f} tasks/s")
        print(f"bulk enqueue (delay_many):     {bench.bulk_rate():8.0f} tasks/s")
        bench.clear()
        print(
            f"drain, cold start ({arguments.drain}):  "
            f"{bench.drain_rate(arguments.drain):8.0f} tasks/s"
        )
        wait_until(
            lambda: (
                scalar(bench.db, "SELECT count(*) FROM task_processor.workers WHERE state = 'idle'")
                == 5
            ),
            30,
        )
        bench.clear()
        print(
            f"drain, running ({arguments.drain}):     "
            f"{bench.drain_rate_running(arguments.drain):8.0f} tasks/s"
        )
        bench.clear()
        time.sleep(1)
        p50, p99 = bench.pickup_latency()
        print(f"pickup latency at 20 tasks/s:  p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        statements, writes = bench.idle_statements()
        print(
            f"idle processor:                {statements:8.2f} statements/s, "
            f"{writes} row writes to tasks/runs/recurring in 30 s"
        )
        print(f"memory (PSS), supervisor + 5 workers: {bench.pss_mib():.1f} MiB")
        print(f"killed worker's task claimed again after {bench.requeue_after_kill():.3f} s")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
