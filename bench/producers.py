"""Enqueue throughput of many producers at once, with and without a processor waiting.

    python3 bench/producers.py [--producers 1,8] [--seconds 5] [--rounds 3]

Each producer is a process calling ``.delay()`` in a loop on its own queue connection. With a
processor waiting for tasks (its row says so, and a connection listens, as an idle
processor's listener does), every insert sends a ``NOTIFY``, and PostgreSQL commits those
transactions one at a time; with none waiting (every worker busy, or no processor running),
inserts announce nothing (migration 0013). Rounds alternate the two; medians are printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time

from run import Bench, connect

from common import enqueue

WAITING_PROCESSOR = """
INSERT INTO task_processor.processors (id, host, pid, num_workers, grace_period_ms, awaits_tasks)
VALUES ('bench-waiting', 'bench', 1, 5, 3600000, true)
"""


def produce(seconds: float, counts: multiprocessing.Queue) -> None:
    from bench_tasks import noop

    noop.delay()  # connect first
    done, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        noop.delay()
        done += 1
    enqueue.close_own_connection()
    counts.put(done)


def rate(producers: int, seconds: float) -> float:
    counts: multiprocessing.Queue = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=produce, args=(seconds, counts)) for _ in range(producers)
    ]
    for process in processes:
        process.start()
    total = sum(counts.get() for _ in processes)
    for process in processes:
        process.join()
    return total / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--producers", default="1,8", help="producer counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    bench = Bench(arguments.admin_url)
    listening = connect(bench.url)
    try:
        for producers in (int(count) for count in arguments.producers.split(",")):
            rates: dict[str, list[float]] = {"a processor waits": [], "none waits": []}
            for _ in range(arguments.rounds):
                for case in rates:
                    bench.clear()
                    with bench.db.cursor() as cursor:
                        cursor.execute("DELETE FROM task_processor.processors")
                        if case == "a processor waits":
                            cursor.execute(WAITING_PROCESSOR)
                    with listening.cursor() as cursor:
                        cursor.execute("LISTEN task_processor")
                    rates[case].append(rate(producers, arguments.seconds))
                    listening.poll()
                    listening.notifies.clear()
            medians = [f"{case} {statistics.median(v):,.0f} tasks/s" for case, v in rates.items()]
            print(f"{producers} producer(s): " + ", ".join(medians))
    finally:
        listening.close()
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
