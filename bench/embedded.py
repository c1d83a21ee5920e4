"""The embedded server beside the machine's: cold start, drain rate and pickup latency.

    python3 bench/embedded.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

First, with no database URL and a fresh data directory, as a new user's first command: the time
to create and start the embedded server, to migrate, to enqueue one task from another process,
and from starting ``run-task-processor`` to that task's run; then the start of the same server
after a stop (its data kept). Then, in the same run, the drain rate (tasks enqueued in bulk into
an idle processor) and the pickup latency at 20 tasks/s, on a database of the machine's server
and on one of the embedded server. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from run import Bench, scalar, wait_until  # noqa: E402

from common import embedded_postgres  # noqa: E402


def without_database(data_dir: Path) -> dict[str, str]:
    """The environment of a machine where nothing names a database."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PG") and key not in ("DATABASE_URL", "TASK_PROCESSOR_DATABASE_URL")
    }
    env.update(
        TASK_PROCESSOR_DATA_DIR=str(data_dir),
        TASK_RUN_METHOD="TASK_PROCESSOR",
        PYTHONPATH=os.pathsep.join([str(BENCH), str(REPO)]),
    )
    return env


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def cold_start(data_dir: Path) -> None:
    env = without_database(data_dir)
    admin = [sys.executable, str(REPO / "bin" / "task-processor")]
    server = timed([*admin, "embedded", "start"], env)
    migrate = timed([*admin, "migrate"], env)
    enqueue = timed([sys.executable, "-c", "import bench_tasks; bench_tasks.noop.delay()"], env)
    server_now = embedded_postgres.find_running(data_dir)
    assert server_now is not None
    connection = psycopg2.connect(server_now.url)
    connection.autocommit = True
    start = time.perf_counter()
    processor = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bin" / "run-task-processor"),
            "--tasks",
            "bench_tasks",
            "--numthreads",
            "5",
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: scalar(connection, "SELECT count(*) FROM task_processor.runs") >= 1, 60, 0.002
        )
        first_run = time.perf_counter() - start
    finally:
        processor.terminate()
        processor.wait(60)
        connection.close()
    print(
        f"cold start, fresh data directory: server created and started {server:.2f} s, "
        f"migrate {migrate:.2f} s, first .delay() (a new process) {enqueue:.2f} s, "
        f"run-task-processor to the first run {first_run:.2f} s; "
        f"total {server + migrate + enqueue + first_run:.2f} s"
    )
    embedded_postgres.stop(data_dir)
    restart = timed([*admin, "embedded", "start"], env)
    print(f"start of the stopped server, data kept: {restart:.2f} s")


def queue_numbers(label: str, admin_url: str, drain: int) -> None:
    bench = Bench(admin_url)
    try:
        bench.start_processor()
        rate = bench.drain_rate_running(drain)
        bench.clear()
        time.sleep(1)
        p50, p99 = bench.pickup_latency()
        print(
            f"{label:<22} drain ({drain}): {rate:8.0f} tasks/s; "
            f"pickup at 20 tasks/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
    finally:
        bench.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="the machine's server, for the side-by-side numbers",
    )
    parser.add_argument("--drain", type=int, default=30_000, help="tasks in the drain runs")
    arguments = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="task-processor-bench-")) / "data"
    try:
        cold_start(data_dir)
        url = embedded_postgres.ensure_running(data_dir).url
        queue_numbers("system server:", arguments.admin_url, arguments.drain)
        queue_numbers("embedded server:", url, arguments.drain)
    finally:
        embedded_postgres.stop(data_dir)
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
