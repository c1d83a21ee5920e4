"""CPU time per no-op task at full drain: the processor's processes and their PostgreSQL
backends, the figure that a noisy machine disturbs least.

    python3 bench/cpu_per_task.py [--checkout PATH ...] [--tasks 20000] [--reps 3]

For each checkout (default: this one) and each repetition, in turns so that drift of the
machine hits every checkout alike: a fresh database, ``run-task-processor --numthreads 5
--tasks bench_tasks`` at its defaults, left to settle; then 20,000 no-op tasks in one bulk
insert, due a few seconds later, the table analysed meanwhile (as the peer benchmark does before
it starts a worker), drained. ``--stale-statistics``: due at once and not analysed, so that the
drain starts before the planner knows of the backlog (the first seconds of a burst: the
supervisor analyses the table within seconds, see supervisor/statistics.py). Reported per
checkout (median of the repetitions): microseconds of CPU (user + system) per task in the
processor's processes and in the backends of its connections (those of workers that connect
during the drain count from their start), and the drain rate. Nothing
here is a pass/fail test.
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

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import connect, processor_command, scalar, wait_until  # noqa: E402

DUE_IN = 4.0  # seconds between the insert and the tasks' due time (the analysis runs meanwhile)


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class Run:
    """One checkout's processor on a database of its own."""

    def __init__(self, admin_url: str, checkout: Path, numthreads: int) -> None:
        self.admin_url, self.checkout, self.numthreads = admin_url, checkout, numthreads
        self.name = f"tp_cpu_{uuid.uuid4().hex[:8]}"
        with connect(admin_url).cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{self.name}"')
        self.url = admin_url.rsplit("/", 1)[0] + "/" + self.name
        self.env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "TASK_PROCESSOR_DATABASE_URL": self.url,
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([str(BENCH), str(checkout)]),
        }
        subprocess.run(
            [sys.executable, "bin/task-processor", "migrate"],
            cwd=checkout,
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.db = connect(self.url)
        self.processor: subprocess.Popen | None = None

    def backends(self) -> list[psutil.Process]:
        with self.db.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND "
                "application_name LIKE 'task-processor %%'",
                (self.name,),
            )
            return [psutil.Process(pid) for (pid,) in cursor.fetchall()]

    def tree(self) -> list[psutil.Process]:
        supervisor = psutil.Process(self.processor.pid)
        return [supervisor, *supervisor.children()]

    def done(self) -> int:
        return scalar(
            self.db,
            "SELECT count(*) FROM task_processor.tasks "
            "WHERE state = 'succeeded' AND identifier = 'bench_tasks.noop'",
        )

    def drain(self, tasks: int, stale_statistics: bool) -> dict[str, float]:
        self.processor = subprocess.Popen(
            processor_command(numthreads=self.numthreads),
            cwd=self.checkout,
            env=self.env,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # The supervisor's connections and the first worker's: the other workers connect when
        # they first claim, during the drain, and their backends count from their start.
        wait_until(lambda: len(self.backends()) >= 3, 60)
        time.sleep(3)  # start-up work (migrations check, recurring tasks) is over
        processes = self.tree()
        processor_before = cpu_seconds(processes)
        backends_before = {backend.pid: cpu_seconds([backend]) for backend in self.backends()}
        due_in = 0.0 if stale_statistics else DUE_IN
        with self.db.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO task_processor.tasks (identifier, args, kwargs, priority,
                    scheduled_for, max_attempts, timeout_ms)
                SELECT 'bench_tasks.noop', '[]', '{}', 20,
                       now() + %s * interval '1 second', 3, 60000
                FROM generate_series(1, %s)""",
                (due_in, tasks),
            )
            start = time.monotonic() + due_in
            if not stale_statistics:
                cursor.execute("ANALYZE task_processor.tasks")
        wait_until(lambda: self.done() >= tasks, 300, 0.01)
        elapsed = time.monotonic() - start
        processor = cpu_seconds(processes) - processor_before
        backends = sum(
            cpu_seconds([backend]) - backends_before.get(backend.pid, 0.0)
            for backend in self.backends()
        )
        self.stop()
        return {
            "processor_us": processor / tasks * 1e6,
            "backends_us": backends / tasks * 1e6,
            "rate": tasks / elapsed,
        }

    def stop(self) -> None:
        if self.processor is not None:
            self.processor.send_signal(signal.SIGTERM)
            self.processor.wait(60)
            self.processor = None

    def close(self) -> None:
        self.stop()
        self.db.close()
        with connect(self.admin_url).cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--checkout",
        action="append",
        type=Path,
        help="a checkout to measure (repeatable; default: this one)",
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--numthreads", type=int, default=5)
    parser.add_argument(
        "--stale-statistics",
        action="store_true",
        help="drain at once, before the table is analysed",
    )
    arguments = parser.parse_args()
    checkouts = [c.resolve() for c in arguments.checkout or [BENCH.parent]]
    results: dict[Path, list[dict[str, float]]] = {c: [] for c in checkouts}
    for rep in range(arguments.reps):
        for checkout in checkouts:
            run = Run(arguments.admin_url, checkout, arguments.numthreads)
            try:
                result = run.drain(arguments.tasks, arguments.stale_statistics)
            finally:
                run.close()
            results[checkout].append(result)
            print(
                f"rep {rep} {checkout}: {result['processor_us']:.0f} + "
                f"{result['backends_us']:.0f} us/task, {result['rate']:.0f} tasks/s",
                flush=True,
            )
    print("\nmedians: processor + backends = CPU per task; drain rate")
    for checkout, runs in results.items():
        processor = statistics.median(r["processor_us"] for r in runs)
        backends = statistics.median(r["backends_us"] for r in runs)
        rate = statistics.median(r["rate"] for r in runs)
        print(
            f"{checkout}: {processor:.0f} + {backends:.0f} = {processor + backends:.0f} "
            f"us/task; {rate:.0f} tasks/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
