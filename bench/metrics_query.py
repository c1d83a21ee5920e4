"""Measure what one scrape of /metrics and one view of the dashboard cost on a big queue.

    python3 bench/metrics_query.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
                                   [--tasks 1000000] [--repeat 20]

Creates a database of its own with ``--tasks`` tasks (by default 1,000,000: 94 % succeeded,
3 % waiting due, 1 % waiting later, 1 % dead, the rest running, cancelled or retried, over 20
identifiers), one attempt row per finished task, the last hour's attempts spread over the hour,
and a processor with 5 workers; then prints the EXPLAIN (ANALYZE, BUFFERS) of the /metrics
statement and the median and p95 of each statement over ``--repeat`` runs. Nothing here is a
pass/fail test. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from api import metrics_queries  # noqa: E402
from api.dashboard import queries as dashboard  # noqa: E402
from common import migrations  # noqa: E402

FILL = """
INSERT INTO task_processor.tasks (identifier, state, scheduled_for, attempts, created_at,
                                  finished_at, last_error)
SELECT 'app.task_' || (i %% 20),
       s.state,
       CASE WHEN s.state = 'waiting' AND r < 0.97 THEN now() - interval '1 hour' * random()
            WHEN s.state = 'waiting' THEN now() + interval '1 hour' * random()
            ELSE now() - interval '30 days' * (i::float8 / %(n)s) END,
       1, now() - interval '30 days' * (i::float8 / %(n)s),
       CASE WHEN s.state IN ('succeeded', 'dead', 'cancelled')
            THEN now() - interval '30 days' * (1 - i::float8 / %(n)s) END,
       CASE WHEN s.state = 'dead' THEN 'RuntimeError: failed' END
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT random() + 0 * i AS r) AS x,  -- correlated: one draw per row
     LATERAL (SELECT CASE WHEN x.r < 0.94 THEN 'succeeded'
                          WHEN x.r < 0.98 THEN 'waiting'
                          WHEN x.r < 0.99 THEN 'dead'
                          WHEN x.r < 0.995 THEN 'cancelled'
                          ELSE 'running' END AS state) AS s
"""

# One attempt per finished task, in finishing order (as a live system appends them).
RUNS = """
INSERT INTO task_processor.runs (task_id, attempt, worker, started_at, finished_at, result)
SELECT id, 1, 'bench-processor/' || (id % 5) || '.1', finished_at - interval '10 ms',
       finished_at, CASE WHEN state = 'succeeded' THEN 'success' ELSE 'failure' END
FROM task_processor.tasks
WHERE finished_at IS NOT NULL
ORDER BY finished_at
"""

PROCESSOR = """
INSERT INTO task_processor.processors (id, host, pid, num_workers, grace_period_ms)
VALUES ('bench-processor', 'bench', 1, 5, 20000);
INSERT INTO task_processor.workers (processor_id, slot, pid, generation, state)
SELECT 'bench-processor', s, 100 + s, 1, 'idle' FROM generate_series(0, 4) AS s;
"""


def measure(connection, label: str, work, repeat: int) -> None:
    times = []
    with connection.cursor() as cursor:
        for _ in range(repeat):
            started = time.perf_counter()
            work(cursor)
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    print(f"{label:<44} median {statistics.median(times):7.1f} ms   p95 {p95:7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    arguments = parser.parse_args()

    name = f"tp_bench_metrics_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(arguments.admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = arguments.admin_url.rsplit("/", 1)[0] + "/" + name
    connection = psycopg2.connect(url)
    try:
        migrations.migrate(connection)
        connection.autocommit = True
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute(FILL, {"n": arguments.tasks})
            cursor.execute(RUNS)
            cursor.execute(PROCESSOR)
            cursor.execute("VACUUM ANALYZE task_processor.tasks")
            cursor.execute("VACUUM ANALYZE task_processor.runs")
            cursor.execute(
                "SELECT state, count(*) FROM task_processor.tasks GROUP BY 1 ORDER BY 2 DESC"
            )
            counts = ", ".join(f"{count:,} {state}" for state, count in cursor.fetchall())
            cursor.execute("SELECT count(*) FROM task_processor.runs")
            runs = cursor.fetchone()[0]
        print(f"filled in {time.monotonic() - started:.0f} s: {counts}; {runs:,} runs")

        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + metrics_queries.SNAPSHOT)
            print("\nEXPLAIN ANALYZE of the /metrics statement:")
            print("\n".join(row[0] for row in cursor.fetchall()))
        print()
        measure(
            connection,
            "/metrics: the one statement per scrape",
            metrics_queries.snapshot,
            arguments.repeat,
        )
        measure(
            connection,
            "dashboard overview: by identifier",
            dashboard.by_identifier,
            arguments.repeat,
        )
        measure(
            connection,
            "dashboard overview: finished in the last hour",
            lambda c: dashboard.overview(c, []),
            arguments.repeat,
        )
        measure(
            connection,
            "dashboard overview: chart (last hour)",
            dashboard.throughput,
            arguments.repeat,
        )
        measure(
            connection,
            "dashboard overview: processors and workers",
            dashboard.processors,
            arguments.repeat,
        )
        measure(
            connection,
            "dashboard task list: first page, one state",
            lambda c: dashboard.tasks(c, "dead", None),
            arguments.repeat,
        )
        measure(
            connection,
            "dashboard task list: first page, one identifier",
            lambda c: dashboard.tasks(c, None, "app.task_7"),
            arguments.repeat,
        )
    finally:
        connection.close()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
