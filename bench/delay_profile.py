"""Where the time of a single ``.delay()`` goes: the caller's CPU, its backend's CPU, and the
rest (the commit's WAL flush, the round trip, scheduling), then the caller's largest costs by
cProfile, what the client's path costs, and how close it comes to the server's own ceiling.
Prints numbers; asserts nothing.

    python3 bench/delay_profile.py [--admin-url postgresql://...] [--tasks 5000] [--rounds 3]

One producer, one task at a time, autocommit (a ``.delay()`` outside a transaction is its own
transaction), as the peer benchmark's single-producer enqueue does; no processor runs.

The client's path: the same prepared insert sent three ways in turn on the queue's own
connection, by ``.delay()`` (libpq's ``PQexecPrepared``, common/libpq.py), by libpq's call
alone (what the task API around it costs) and by psycopg2's ``EXECUTE`` text (what libpq's call
saves); medians of the rounds, with the caller's CPU per insert.

The ceiling (when ``pgbench`` is on the PATH): pgbench, a C client with prepared statements,
one client, sending the very insert a ``.delay()`` sends, then the same insert into copies of
the tasks table that carry less (no new-task trigger; no check constraints either; the primary
key as its only index), then the least durable insert there is (a row of one ``bigserial``
column), each in its own transaction. Rounds alternate them all so that the machine's drift
hits each alike; the figures are medians.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
from run import Bench, connect, scalar

from common import enqueue, libpq


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


def delay_rate(task, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        task.delay()
    return calls / (time.perf_counter() - started)


def noop_row(kind: enqueue.TaskKind) -> dict[str, object]:
    """The parameters of the one-task insert that a ``.delay()`` of the no-op task sends."""
    return {
        "identifier": kind.identifier,
        "args": "[]",
        "kwargs": "{}",
        "priority": kind.priority,
        "scheduled_for": None,
        "max_attempts": kind.max_attempts,
        "timeout_ms": kind.timeout_ms,
        "trace_context": None,
    }


def client_paths(bench: Bench, rounds: int, calls: int) -> None:
    """``.delay()`` beside the same prepared insert by libpq's call alone and by psycopg2."""
    noop = bench.tasks.noop
    values = noop_row(noop.kind)
    statement = enqueue._INSERT_ONE
    ordered = [values[name] for name in statement.parameters]

    def by_libpq(connection) -> None:
        libpq.first_value(connection, statement.name, ordered)

    def by_psycopg2(connection) -> None:
        with connection.cursor() as cursor:
            cursor.execute(statement.execute, values)
            cursor.fetchone()

    connection = enqueue.on_own_connection(lambda own: own)
    paths = {
        ".delay()": noop.delay,
        "libpq's call alone": lambda: by_libpq(connection),
        "psycopg2's EXECUTE": lambda: by_psycopg2(connection),
    }
    figures: dict[str, list[tuple[float, float, float]]] = {label: [] for label in paths}
    for _ in range(rounds):
        for label, send in paths.items():
            backend, cpu, started = backend_cpu(bench), time.process_time(), time.perf_counter()
            for _ in range(calls):
                send()
            wall = time.perf_counter() - started
            caller = (time.process_time() - cpu) * 1e6 / calls
            figures[label].append(
                (calls / wall, caller, (backend_cpu(bench) - backend) * 1e6 / calls)
            )
    print(f"the client's path, the same prepared insert ({rounds} rounds):")
    for label, runs in figures.items():
        rate, caller, backend = (statistics.median(run[i] for run in runs) for i in range(3))
        print(
            f"  {label:20s} {rate:6.0f}/s, CPU per insert: caller {caller:3.0f} us, "
            f"backend {backend:3.0f} us"
        )


def pgbench_rate(url: str, statement: str, seconds: int) -> float:
    """Transactions/s of pgbench sending ``statement``, one client, prepared."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(statement + ";\n")
        script.flush()
        out = subprocess.run(
            [
                "pgbench",
                "-n",
                "-M",
                "prepared",
                "-c",
                "1",
                "-T",
                str(seconds),
                "-f",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


# What the task row costs the server, one part at a time: copies of the tasks table (same
# columns and defaults, same sequence) with less and less of what it carries, then a row of
# one column. Each is a table of the bench database, so that rounds can alternate them all.
_LADDER = [
    ("the tasks table", None),
    ("without the new-task trigger", "INCLUDING ALL"),
    ("without the check constraints either", "INCLUDING DEFAULTS INCLUDING INDEXES"),
    ("with its primary key only", "INCLUDING DEFAULTS"),
]


def _ladder_tables(cursor) -> list[str]:
    tables = ["task_processor.tasks"]
    for step, (_, like) in enumerate(_LADDER[1:], start=1):
        table = f"public.tasks_step_{step}"
        cursor.execute(f"CREATE TABLE {table} (LIKE task_processor.tasks {like})")
        if like == "INCLUDING DEFAULTS":
            cursor.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        tables.append(table)
    cursor.execute("CREATE TABLE public.one_column (id bigserial PRIMARY KEY)")
    return tables


def ceiling(bench: Bench, rounds: int, calls: int) -> None:
    """``.delay()`` beside pgbench sending the same insert, the same insert into tables that
    carry less, and the least durable insert there is."""
    if shutil.which("pgbench") is None:
        print("(no pgbench on the PATH: the server's ceiling is not measured)")
        return
    kind = bench.tasks.noop.kind
    with bench.db.cursor() as cursor:
        tables = _ladder_tables(cursor)
        # The statement a .delay() of the no-op task sends, its parameters written in.
        task_row = cursor.mogrify(enqueue._INSERT_ONE.plain, noop_row(kind)).decode()
    statements = [task_row.replace("task_processor.tasks", table) for table in tables]
    statements.append("INSERT INTO public.one_column DEFAULT VALUES")
    labels = [label for label, _ in _LADDER] + ["a row of one bigserial column"]
    seconds = 5
    delays: list[float] = []
    rates: list[list[float]] = [[] for _ in statements]
    for _ in range(rounds):
        delays.append(delay_rate(bench.tasks.noop, calls))
        for index, statement in enumerate(statements):
            rates[index].append(pgbench_rate(bench.url, statement, seconds))
    delay = statistics.median(delays)
    medians = [statistics.median(each) for each in rates]
    print(f"the server's ceiling, one client, each insert its own transaction ({rounds} rounds):")
    print(f"  .delay()                                        {delay:7.0f}/s")
    for label, rate in zip(labels, medians, strict=True):
        print(f"  pgbench: {label:39s} {rate:7.0f}/s  (.delay(): {delay / rate:.0%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the ceiling's alternation")
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
        client_paths(bench, arguments.rounds, arguments.tasks)
        ceiling(bench, arguments.rounds, arguments.tasks)
        tasks = scalar(bench.db, "SELECT count(*) FROM task_processor.tasks")
        print(f"({tasks} tasks enqueued in all)")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
