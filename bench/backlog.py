"""A queue of millions: how the processor drains a huge backlog, and how it holds a steady
high rate for a long run with retention deleting behind it. Prints numbers; asserts nothing.

    python3 bench/backlog.py [--backlog 1000000] [--small 20000] [--rate 2000]
                             [--steady-seconds 600] [--admin-url postgresql://...]

1. Drain: a ``--small`` backlog, then a ``--backlog`` one, each enqueued in bulk while the
   processor is stopped and then drained by ``run-task-processor --numthreads 5``; the rate
   is read from the tasks' own finishing times, so start-up is not counted. The big drain's
   rate is also printed per minute, to show whether it slows as the table fills or empties.
2. Retention: the drain rate of a fresh backlog with the retention clean-up deleting the big
   backlog's finished tasks at the same time, against the same drain without it; the longest
   delete batch is the longest any row lock of the clean-up is held.
3. Steady: ``--rate`` tasks/s for ``--steady-seconds``, the clean-up keeping one minute of
   finished tasks (run every 15 s, as the hourly one would with days of history): per window,
   the rate reached, pickup latency p50/p99, and the sizes of the tasks and runs tables, their
   indexes and their dead tuples.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import psycopg2.extensions

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH), str(BENCH.parent / "tests" / "support")]

from clusters import Cluster  # noqa: E402
from run import Bench, connect, scalar, wait_until  # noqa: E402

from builtin_tasks import retention  # noqa: E402

CHUNK = 10_000  # tasks per bulk insert
WINDOW = 15.0  # seconds per line of the steady run
KEPT_SECONDS = 60  # finished tasks the steady run's clean-up keeps


class TimedCursor(psycopg2.extensions.cursor):
    """Records how long each statement took: every delete batch of the clean-up is one
    transaction, so the longest is the longest time it holds a row lock."""

    durations: ClassVar[list[float]] = []

    def execute(self, query: Any, vars: Any = None) -> None:
        started = time.perf_counter()
        try:
            super().execute(query, vars)
        finally:
            self.durations.append(time.perf_counter() - started)


class Backlog(Bench):
    def waiting(self) -> int:
        return scalar(
            self.db,
            "SELECT count(*) FROM task_processor.tasks WHERE state IN ('waiting', 'running')",
        )

    def enqueue(self, count: int) -> tuple[int, float]:
        """Bulk-insert ``count`` no-op tasks; the first id and the insert rate."""
        first = scalar(self.db, "SELECT coalesce(max(id), 0) + 1 FROM task_processor.tasks")
        started = time.perf_counter()
        for offset in range(0, count, CHUNK):
            self.tasks.noop.delay_many([{}] * min(CHUNK, count - offset))
        return first, count / (time.perf_counter() - started)

    def finishing_rate(self, first_id: int) -> float:
        """Tasks per second between the first and the last to finish from ``first_id`` on."""
        count, seconds = self.fetch_one(
            """
            SELECT count(*), extract(epoch FROM max(finished_at) - min(finished_at))
            FROM task_processor.tasks WHERE id >= %s AND identifier = 'bench_tasks.noop'""",
            (first_id,),
        )
        return count / seconds

    def fetch_one(self, sql: str, params: tuple = ()) -> tuple:
        with self.db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def drain(self, count: int, label: str, per_minute: bool = False) -> float:
        """Enqueue ``count`` with the processor stopped, start it, wait; the drain rate."""
        self.stop_processor()
        first, insert_rate = self.enqueue(count)
        print(f"{label}: enqueued {count} in bulk at {insert_rate:.0f} tasks/s", flush=True)
        self.start_processor(wait=False)
        minute_started, left_then = time.monotonic(), count
        while (left := self.waiting()) > 0:
            if per_minute and time.monotonic() - minute_started >= 60:
                print(
                    f"  {left:8d} left, {(left_then - left) / 60:6.0f} tasks/s over the "
                    f"last minute",
                    flush=True,
                )
                minute_started, left_then = time.monotonic(), left
            time.sleep(1)
        rate = self.finishing_rate(first)
        print(f"{label}: drained at {rate:.0f} tasks/s", flush=True)
        return rate

    def timed_drain(self, count: int, alongside: threading.Thread | None = None) -> float:
        """Enqueue ``count`` with the processor stopped, start it (and ``alongside``), wait;
        tasks per second from the first task's end to the last one's, by the clock of this
        process (the clean-up deletes finished tasks, so their times cannot be read back)."""
        self.stop_processor()
        self.enqueue(count)
        self.start_processor(wait=False)
        if alongside is not None:
            alongside.start()
        wait_until(lambda: self.waiting() < count, 600, 0.02)
        began = time.perf_counter()
        wait_until(lambda: self.waiting() == 0, 3600, 0.1)
        return count / (time.perf_counter() - began)

    def drain_with_clean_up(self, count: int) -> tuple[float, int, float]:
        """Drain ``count`` while the clean-up deletes every task finished a second before; the
        rate, the rows deleted and the longest delete batch in seconds."""
        cleaner = connect(self.url)
        cleaner.cursor_factory = TimedCursor
        deleted: dict[str, int] = {}
        cutoff_days = 1 / 86400
        clean_up = threading.Thread(
            target=lambda: deleted.update(retention.clean_up(cleaner, cutoff_days, cutoff_days))
        )
        rate = self.timed_drain(count, alongside=clean_up)
        clean_up.join()
        cleaner.close()
        return rate, deleted["succeeded tasks"], max(TimedCursor.durations)

    # -- the steady run ----------------------------------------------------------------------

    def steady(self, rate: int, seconds: int) -> None:
        self.stop_processor()
        self.clear()
        self.vacuum()
        self.start_processor()
        stop = threading.Event()
        produced = [0]

        def produce() -> None:
            batch = max(1, rate // 20)  # every 50 ms
            started = time.monotonic()
            while not stop.is_set():
                due = (time.monotonic() - started) * rate
                if produced[0] < due:
                    self.tasks.noop.delay_many([{}] * batch)
                    produced[0] += batch
                else:
                    time.sleep(0.005)

        def clean() -> None:
            cleaner = connect(self.url)
            while not stop.wait(WINDOW):
                retention.clean_up(cleaner, KEPT_SECONDS / 86400, KEPT_SECONDS / 86400)
            cleaner.close()

        threads = [threading.Thread(target=produce), threading.Thread(target=clean)]
        for thread in threads:
            thread.start()
        print(f"steady run, {rate} tasks/s asked for {seconds} s; every {WINDOW:.0f} s:")
        print(
            "  time  made/s  done/s  p50 ms  p99 ms  tasks MB  idx MB  dead tup  "
            "runs MB  runs idx MB  runs dead"
        )
        began = time.monotonic()
        window_start = self.fetch_one("SELECT now()")[0]
        done_before = 0
        made_before = 0
        try:
            while time.monotonic() - began < seconds:
                time.sleep(WINDOW)
                window_end = self.fetch_one("SELECT now()")[0]
                done = produced[0] - self.waiting()
                p50, p99 = self.latencies(window_start, window_end)
                sizes = self.sizes()
                print(
                    f"  {time.monotonic() - began:4.0f}"
                    f"  {(produced[0] - made_before) / WINDOW:6.0f}"
                    f"  {(done - done_before) / WINDOW:6.0f}  {p50:6.1f}  {p99:6.1f}  "
                    f"{sizes['tasks'][0]:8.1f}  {sizes['tasks'][1]:6.1f}  "
                    f"{sizes['tasks'][2]:8d}  {sizes['runs'][0]:7.1f}  "
                    f"{sizes['runs'][1]:11.1f}  {sizes['runs'][2]:9d}",
                    flush=True,
                )
                window_start, done_before, made_before = window_end, done, produced[0]
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        print(
            "  autovacuum runs: "
            + ", ".join(f"{table} {count}" for table, count in self.autovacuums())
        )

    def latencies(self, start, end) -> tuple[float, float]:
        """Pickup latency (creation to first start) of the tasks made in [start, end) that
        have started; milliseconds."""
        with self.db.cursor() as cursor:
            cursor.execute(
                """
                SELECT extract(epoch FROM r.started_at - t.created_at) * 1000
                FROM task_processor.tasks t JOIN task_processor.runs r ON r.task_id = t.id
                WHERE t.created_at >= %s AND t.created_at < %s AND r.attempt = 1""",
                (start, end),
            )
            values = sorted(row[0] for row in cursor.fetchall())
        if not values:
            return float("nan"), float("nan")
        return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]

    def sizes(self) -> dict[str, tuple[float, float, int]]:
        """Per table: heap MB, indexes MB, dead tuples."""
        with self.db.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("""
                SELECT relname, pg_relation_size(relid) / 1048576.0,
                       pg_indexes_size(relid) / 1048576.0, n_dead_tup
                FROM pg_stat_user_tables
                WHERE schemaname = 'task_processor' AND relname IN ('tasks', 'runs')""")
            return {
                name: (float(heap), float(indexes), dead)
                for name, heap, indexes, dead in cursor.fetchall()
            }

    def autovacuums(self) -> list[tuple[str, int]]:
        with self.db.cursor() as cursor:
            cursor.execute(
                "SELECT relname, autovacuum_count FROM pg_stat_user_tables "
                "WHERE schemaname = 'task_processor' AND relname IN "
                "('tasks', 'runs') ORDER BY relname"
            )
            return cursor.fetchall()

    def vacuum(self) -> None:
        with self.db.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE task_processor.tasks, task_processor.runs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--admin-url",
        help="a server to use; by default a private one is "
        "started, with PostgreSQL's default autovacuum settings (a shared "
        "test server may have autovacuum off, which no queue survives)",
    )
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=2000, help="tasks/s of the steady run")
    parser.add_argument("--steady-seconds", type=int, default=600)
    parser.add_argument("--skip-drain", action="store_true", help="the steady run only")
    arguments = parser.parse_args()
    server = None if arguments.admin_url else Cluster("bench").init_primary().start()
    bench = Backlog(arguments.admin_url or server.url)
    try:
        if not arguments.skip_drain:
            small = bench.drain(arguments.small, f"small backlog ({arguments.small})")
            big = bench.drain(
                arguments.backlog, f"big backlog ({arguments.backlog})", per_minute=True
            )
            print(f"big backlog drains at {big / small:.0%} of the small one's rate")
            alone = bench.timed_drain(arguments.small * 5)
            print(f"drain without clean-up: {alone:.0f} tasks/s", flush=True)
            rate, deleted, longest = bench.drain_with_clean_up(arguments.small * 5)
            print(
                f"drain with the clean-up deleting {deleted} tasks meanwhile: {rate:.0f} "
                f"tasks/s ({rate / alone:.0%} of {alone:.0f}); longest delete batch "
                f"{longest * 1000:.0f} ms"
            )
        bench.steady(arguments.rate, arguments.steady_seconds)
    finally:
        bench.close()
        if server is not None:
            server.stop(remove=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
