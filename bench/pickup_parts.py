"""Where a pickup's time goes: the producer's ``.delay()`` (its insert and the commit's flush)
against the rest (the notification, the supervisor's wake-up token, the worker's claim and
its commit), for each task and for the slowest of them. Prints numbers; asserts nothing.

    python3 bench/pickup_parts.py [--admin-url postgresql://...] [--tasks 600] [--rate 20]

An idle processor (``--numthreads 5``) on a database of its own, tasks enqueued one at a time
at ``--rate`` per second, as the peer benchmark's pickup workload does. A task's start is the
``started_at`` its worker records; the producer's clock brackets its ``.delay()`` call (one
machine, one clock).
"""

from __future__ import annotations

import argparse
import statistics
import time

from run import Bench


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95, p99 = (ordered[min(len(ordered) - 1, int(len(ordered) * share))] for share in (0.95, 0.99))
    return (
        f"p50 {statistics.median(ordered):6.2f}  p95 {p95:6.2f}  p99 {p99:6.2f}  "
        f"max {ordered[-1]:6.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--rate", type=float, default=20.0, help="tasks enqueued per second")
    arguments = parser.parse_args()
    bench = Bench(arguments.admin_url)
    try:
        bench.start_processor()
        called: dict[int, tuple[float, float]] = {}
        for _ in range(arguments.tasks):
            before = time.time()
            task_id = bench.tasks.noop.delay()
            called[task_id] = (before, time.time())
            time.sleep(1 / arguments.rate)
        bench.stop_processor()  # SIGTERM: every task started has been recorded
        with bench.db.cursor() as cursor:
            cursor.execute(
                "SELECT task_id, extract(epoch FROM started_at)::float8 "
                "FROM task_processor.runs WHERE task_id = ANY(%s)",
                (list(called),),
            )
            started = dict(cursor.fetchall())
    finally:
        bench.close()
    parts = [
        ((started[task] - before) * 1000, (after - before) * 1000, (started[task] - after) * 1000)
        for task, (before, after) in called.items()
        if task in started
    ]
    print(f"{len(parts)} of {len(called)} tasks started, one every {1000 / arguments.rate:.0f} ms")
    for index, name in enumerate(("pickup", "producer's .delay()", "the rest")):
        print(f"  {name:20} {percentiles([part[index] for part in parts])}")
    slowest = sorted(parts)[-max(1, len(parts) // 100) :]
    print(f"the slowest {len(slowest)} (1 %): pickup, of it the producer's call and the rest (ms)")
    for total, producer, rest in slowest:
        print(f"  {total:7.2f} = {producer:7.2f} + {rest:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
