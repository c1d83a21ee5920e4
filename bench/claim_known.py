"""The claim on a queue of a million waiting tasks: its plan and its time.

    python3 bench/claim_known.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

A processor claims only the identifiers it knows (worker/queries.py CLAIM). This creates a
database of its own, fills the queue, and for each scenario prints the plan summary of the
claim (EXPLAIN ANALYZE, BUFFERS) and its time over repeated claims, each rolled back so that
every claim sees the same queue:

- backlog: 1,000,000 due tasks of 20 identifiers, all known;
- unknown ahead: 1,000,000 due tasks of an identifier this processor does not know, all of a
  higher priority than the 1,000 tasks it knows;
- idle: 1,000,000 tasks of known identifiers, all delayed to tomorrow.

Beside each, the same claim written as a filter on the priority-ordered index (``identifier =
ANY(known)`` on tasks_claim_idx), the design this one was chosen over. Nothing here is a
pass/fail test.
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
sys.path.insert(0, str(REPO))

from common import migrations  # noqa: E402
from worker import queries  # noqa: E402
from worker.queries import CLAIM  # noqa: E402

ROWS = 1_000_000
REPEATS = 200
KNOWN = [f"app.task_{n}" for n in range(20)]

# The alternative measured beside the claim: the same statement, its candidates read as a
# filter on the priority-ordered index.
_PER_IDENTIFIER = CLAIM[CLAIM.index("    SELECT c.id, c.priority") : CLAIM.index("), next AS")]
FILTERED_CLAIM = CLAIM.replace(
    _PER_IDENTIFIER,
    """
    SELECT id, priority, scheduled_for FROM task_processor.tasks
    WHERE state = 'waiting' AND scheduled_for <= now() AND identifier = ANY(%(known)s)
    ORDER BY priority, scheduled_for, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
""",
)

SCENARIOS = {
    "backlog": [
        (
            (
                "INSERT INTO task_processor.tasks (identifier, priority, scheduled_for) "
                "SELECT 'app.task_' || (n %% 20), 20, "
                "now() - interval '1 hour' + n * interval '1 ms' "
                "FROM generate_series(1, %s) AS n"
            ),
            (ROWS,),
        ),
    ],
    "unknown ahead": [
        (
            (
                "INSERT INTO task_processor.tasks (identifier, priority, scheduled_for) "
                "SELECT 'newer_release.task', 10, now() - interval '1 hour' "
                "FROM generate_series(1, %s)"
            ),
            (ROWS,),
        ),
        (
            (
                "INSERT INTO task_processor.tasks (identifier, priority, scheduled_for) "
                "SELECT 'app.task_' || (n %% 20), 20, now() - interval '1 hour' "
                "FROM generate_series(1, 1000) AS n"
            ),
            (),
        ),
    ],
    "idle": [
        (
            (
                "INSERT INTO task_processor.tasks (identifier, priority, scheduled_for) "
                "SELECT 'app.task_' || (n %% 20), 20, now() + interval '1 day' "
                "FROM generate_series(1, %s) AS n"
            ),
            (ROWS,),
        ),
    ],
}


def claim_parameters() -> dict:
    return queries.claim_parameters(limit=10, owner="bench/0.1", lease_seconds=300, known=KNOWN)


def explain(connection, statement: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, claim_parameters())
        lines = [row[0] for row in cursor.fetchall()]
    connection.rollback()
    keep = ("Index", "LockRows", "Rows Removed", "Planning Time", "Execution Time")
    return [line for line in lines if any(word in line for word in keep)]


def timed(connection, statement: str) -> tuple[float, float]:
    """Median and 99th percentile of one claim, in milliseconds."""
    times = []
    with connection.cursor() as cursor:
        for _ in range(REPEATS):
            started = time.perf_counter()
            cursor.execute(statement, claim_parameters())
            cursor.fetchall()
            times.append((time.perf_counter() - started) * 1000)
            connection.rollback()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    admin_url = parser.parse_args().admin_url
    name = f"tp_bench_claim_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        connection = psycopg2.connect(admin_url.rsplit("/", 1)[0] + "/" + name)
        migrations.migrate(connection)
        for scenario, inserts in SCENARIOS.items():
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE task_processor.tasks CASCADE")
                for statement, parameters in inserts:
                    cursor.execute(statement, parameters)
            connection.commit()
            connection.autocommit = True
            connection.cursor().execute("VACUUM ANALYZE task_processor.tasks")
            connection.autocommit = False
            print(f"== {scenario}")
            for label, statement in (
                ("claim", CLAIM),
                ("filter on tasks_claim_idx", FILTERED_CLAIM),
            ):
                median, p99 = timed(connection, statement)
                print(
                    f"-- {label}: median {median:.2f} ms, p99 {p99:.2f} ms "
                    f"({REPEATS} claims, each rolled back)"
                )
                for line in explain(connection, statement):
                    print("   " + line.strip())
        connection.close()
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
