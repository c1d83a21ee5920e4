"""A chaos run: many tasks on two processors while workers and supervisors are killed with
SIGKILL, stopped with SIGSTOP and resumed, and PostgreSQL restarts. Prints its figures; checks
that no task was lost, that no two attempts of one task ran at the same time, and that every
task ended in a final state. Not a test: it takes a few minutes.

    python3 bench/chaos.py [--tasks 600] [--seconds 60] [--seed N]

It runs its own PostgreSQL server (``initdb`` and ``pg_ctl`` from ``pg_config --bindir``, as
the ``postgres`` user when run as root) on a free port in a temporary directory, so that
restarting it disturbs nobody.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg2

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from common import migrations  # noqa: E402 - found through the path set just above

LEASE_SECONDS = 5  # short, so that paused supervisors are fenced and their leases expire often
WORKERS = 3

OVERLAPS = """
SELECT count(*) FROM chaos_attempts a JOIN chaos_attempts b
  ON a.key = b.key AND a.id < b.id
 AND a.started_at < coalesce(b.ended_at, b.seen_at)
 AND b.started_at < coalesce(a.ended_at, a.seen_at)
"""


class Server:
    """A private PostgreSQL server in a temporary directory."""

    def __init__(self) -> None:
        self.bindir = Path(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())
        self.directory = Path(tempfile.mkdtemp(prefix="tp-chaos-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.directory, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _pg_ctl(self, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            f"-c max_connections=200 -c fsync=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "log"),
            "-w",
            "-o",
            options,
            *args,
        )

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Figures:
    worker_kills: int = 0
    worker_stops: int = 0
    supervisor_stops: int = 0
    supervisor_kills: int = 0
    database_restarts: int = 0
    enqueue_retries: int = 0
    keys: list[str] = field(default_factory=list)


class Chaos:
    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.random = random.Random(seed)
        self.figures = Figures()
        self.processors: list[subprocess.Popen | None] = [None, None]
        self.log = open(  # noqa: SIM115 - the processors' log for the whole run, closed at its end
            Path(tempfile.gettempdir()) / f"tp-chaos-{os.getpid()}.log",
            "ab",
        )  # the processors' output, for as long as the run lasts

    def start_processor(self, index: int) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO)]),
        }
        self.processors[index] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor.cli",
                "--tasks",
                "chaos_tasks",
                "--numthreads",
                str(WORKERS),
                "--lease-seconds",
                str(LEASE_SECONDS),
            ],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def restart_dead_processors(self) -> None:
        for index, process in enumerate(self.processors):
            if process is None or process.poll() is not None:
                self.start_processor(index)

    def workers(self) -> list[int]:
        pids = []
        for process in self.processors:
            if process is not None and process.poll() is None:
                try:
                    pids += [child.pid for child in psutil.Process(process.pid).children()]
                except psutil.NoSuchProcess:
                    pass
        return pids

    def enqueue(self, count: int) -> None:
        import chaos_tasks

        keys = [f"t{len(self.figures.keys) + i}" for i in range(count)]
        calls = [{"args": (key, self.random.uniform(0, 0.6))} for key in keys]
        while True:
            try:
                chaos_tasks.step.delay_many(calls)
                break
            except Exception as error:
                self.figures.enqueue_retries += 1
                print(f"  enqueue failed ({type(error).__name__}); retrying", flush=True)
                time.sleep(0.5)
        self.figures.keys += keys

    def act(self, server: Server) -> None:
        """One random disturbance."""
        roll = self.random.random()
        workers = self.workers()
        if roll < 0.35 and workers:
            _signal(self.random.choice(workers), signal.SIGKILL)
            self.figures.worker_kills += 1
        elif roll < 0.60 and workers:
            pid = self.random.choice(workers)
            _signal(pid, signal.SIGSTOP)
            time.sleep(self.random.uniform(0.2, 2.0))
            _signal(pid, signal.SIGCONT)
            self.figures.worker_stops += 1
        elif roll < 0.80:
            process = self.random.choice([p for p in self.processors if p is not None])
            _signal(process.pid, signal.SIGSTOP)
            time.sleep(self.random.uniform(1.0, 2.5 * LEASE_SECONDS))  # past the fence often
            _signal(process.pid, signal.SIGCONT)
            self.figures.supervisor_stops += 1
        elif roll < 0.95:
            process = self.random.choice([p for p in self.processors if p is not None])
            _signal(process.pid, signal.SIGKILL)
            process.wait()
            self.figures.supervisor_kills += 1
        else:
            server.restart()
            self.figures.database_restarts += 1

    def fenced_workers(self) -> int:
        """How many workers the lease fence killed, as their supervisors logged it."""
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace")
        return text.count("killed by its lease fence")

    def stop(self) -> None:
        for process in self.processors:
            if process is not None:
                _signal(process.pid, signal.SIGCONT)
                _signal(process.pid, signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    _signal(process.pid, signal.SIGKILL)
        self.log.close()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    connection = psycopg2.connect(url, connect_timeout=5)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the chaos lasts")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    options = parser.parse_args()

    server = Server()
    server.start()
    chaos: Chaos | None = None
    try:
        url = server.url.rsplit("/", 1)[0] + "/chaos"
        _query(server.url, "CREATE DATABASE chaos")
        connection = psycopg2.connect(url)
        migrations.migrate(connection)
        connection.close()
        import chaos_tasks

        _query(url, chaos_tasks.ATTEMPTS_TABLE)
        os.environ.update(DATABASE_URL=url, TASK_RUN_METHOD="TASK_PROCESSOR")
        print(
            f"chaos run: seed {options.seed}, {options.tasks} tasks, {options.seconds:.0f} s "
            f"of chaos, 2 processors x {WORKERS} workers, lease {LEASE_SECONDS} s",
            flush=True,
        )

        chaos = Chaos(url, options.seed)
        chaos.restart_dead_processors()
        started = time.monotonic()
        batches = 12
        batch_every = options.seconds * 0.7 / batches
        next_batch = started
        restart_database_at = started + options.seconds / 2  # at least once, mid-run
        while time.monotonic() - started < options.seconds:
            if restart_database_at and time.monotonic() >= restart_database_at:
                server.restart()
                chaos.figures.database_restarts += 1
                restart_database_at = 0.0
            if len(chaos.figures.keys) < options.tasks and time.monotonic() >= next_batch:
                chaos.enqueue(
                    min(options.tasks // batches + 1, options.tasks - len(chaos.figures.keys))
                )
                next_batch += batch_every
            chaos.act(server)
            chaos.restart_dead_processors()
            time.sleep(chaos.random.uniform(0.2, 1.0))
        if len(chaos.figures.keys) < options.tasks:
            chaos.enqueue(options.tasks - len(chaos.figures.keys))
        chaos_over = time.monotonic()
        print("chaos over; waiting for every task to end", flush=True)

        def unfinished() -> int:
            return _query(
                url,
                "SELECT count(*) FROM task_processor.tasks WHERE "
                "identifier = 'chaos_tasks.step' AND state NOT IN "
                "('succeeded', 'dead')",
            )[0][0]

        deadline = time.monotonic() + 300
        while unfinished() and time.monotonic() < deadline:
            chaos.restart_dead_processors()
            time.sleep(0.5)
        settled = time.monotonic() - chaos_over

        states = dict(
            _query(
                url,
                "SELECT state, count(*) FROM task_processor.tasks WHERE "
                "identifier = 'chaos_tasks.step' GROUP BY state",
            )
        )
        stored_keys = {
            key
            for (key,) in _query(
                url,
                "SELECT args_exact->>0 FROM task_processor.tasks "
                "WHERE identifier = 'chaos_tasks.step'",
            )
        }
        lost = len(set(chaos.figures.keys) - stored_keys)
        succeeded_without_a_full_attempt = _query(
            url,
            """
            SELECT count(*) FROM task_processor.tasks t
            WHERE t.identifier = 'chaos_tasks.step' AND t.state = 'succeeded'
              AND NOT EXISTS (SELECT 1 FROM chaos_attempts a
                              WHERE a.key = t.args_exact->>0 AND a.ended_at IS NOT NULL)""",
        )[0][0]
        overlaps = _query(url, OVERLAPS)[0][0]
        attempts = _query(url, "SELECT count(*), count(ended_at) FROM chaos_attempts")[0]
        runs = dict(
            _query(
                url,
                "SELECT result, count(*) FROM task_processor.runs r JOIN "
                "task_processor.tasks t ON t.id = r.task_id WHERE "
                "t.identifier = 'chaos_tasks.step' GROUP BY result",
            )
        )
        figures = chaos.figures
        print(
            f"disturbances: {figures.worker_kills} worker SIGKILLs, {figures.worker_stops} "
            f"worker SIGSTOP/SIGCONT, {figures.supervisor_stops} supervisor SIGSTOP/SIGCONT, "
            f"{figures.supervisor_kills} supervisor SIGKILLs (restarted), "
            f"{figures.database_restarts} PostgreSQL restarts, {figures.enqueue_retries} "
            f"enqueue retries; {chaos.fenced_workers()} workers killed by their lease fence"
        )
        print(
            f"tasks enqueued: {len(figures.keys)}; in the queue: {len(stored_keys)}; "
            f"states: {states}"
        )
        print(
            f"attempts started: {attempts[0]}, ran to their end: {attempts[1]}; "
            f"runs recorded: {runs}"
        )
        print(f"settled {settled:.1f} s after the chaos ended")
        print(
            f"LOST: {lost}   OVERLAPPING ATTEMPTS: {overlaps}   NOT FINAL: {unfinished()}   "
            f"SUCCEEDED WITHOUT A COMPLETE ATTEMPT: {succeeded_without_a_full_attempt}"
        )
        return (
            0 if not (lost or overlaps or unfinished() or succeeded_without_a_full_attempt) else 1
        )
    finally:
        if chaos is not None:
            chaos.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
