"""Where the time of a single ``.delay()`` goes: the caller's CPU, its backend's CPU, and the
rest (the commit's WAL flush, the round trip, scheduling), then the caller's largest costs by
cProfile. Prints numbers; asserts nothing.

    python3 bench/delay_profile.py [--admin-url postgresql://...] [--tasks 5000]

One producer, one task at a time, autocommit (a ``.delay()`` outside a transaction is its own
transaction), as the peer benchmark's single-producer enqueue does; no processor runs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time

import psutil
from run import Bench, connect, scalar


def backend_cpu(bench: Bench) -> float:
    """CPU seconds so far of the backend serving this process's queue connection."""
    probe = connect(bench.url)
    with probe.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name "
            "LIKE 'task-processor enqueue%%'",
            (bench.name,),
        )
        (pid,) = cursor.fetchone()
    probe.close()
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--tasks", type=int, default=5000)
    arguments = parser.parse_args()
    bench = Bench(arguments.admin_url)
    try:
        noop = bench.tasks.noop
        noop.delay()  # opens this thread's queue connection
        backend_before, own_before = backend_cpu(bench), time.process_time()
        started = time.perf_counter()
        for _ in range(arguments.tasks):
            noop.delay()
        wall = time.perf_counter() - started
        own, backend = time.process_time() - own_before, backend_cpu(bench) - backend_before
        per = 1e6 / arguments.tasks
        print(f"{arguments.tasks / wall:.0f} .delay() calls/s, {wall * per:.0f} us each:")
        print(f"  caller CPU   {own * per:6.0f} us")
        print(f"  backend CPU  {backend * per:6.0f} us")
        print(f"  the rest     {(wall - own - backend) * per:6.0f} us (commit flush, round trip)")
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(arguments.tasks):
            noop.delay()
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
        print("the caller's largest costs (cProfile, its own time):")
        print("\n".join(out.getvalue().splitlines()[6:]))
        tasks = scalar(bench.db, "SELECT count(*) FROM task_processor.tasks")
        print(f"({tasks} tasks enqueued in all)")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
