"""Running real processors in tests: start, signal, inspect, and always clean up.

The test process makes itself a child subreaper, so that workers orphaned by a killed
supervisor are re-parented to it and can be checked and reaped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from common.settings import ProcessorSettings

SUPPORT = Path(__file__).resolve().parent  # the task modules that test processors import
REPO = SUPPORT.parent.parent
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_orphans() -> None:
    """Reap any child that is not a subprocess.Popen of ours (orphaned workers)."""
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def processor_settings(database_url: str, **overrides: Any) -> ProcessorSettings:
    """The settings of a processor on ``database_url`` with the defaults of its options."""
    return ProcessorSettings(database_url=database_url, processor_id="test-processor", **overrides)


def query(url: str, sql: str, params: Sequence = ()) -> list[tuple]:
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


# The first start's clean-up, due or still queued or running.
_START_UP_WORK = """
SELECT 1 FROM task_processor.recurring_tasks
WHERE identifier = 'retention.clean_up_old_tasks' AND next_run_at <= now()
UNION ALL
SELECT 1 FROM task_processor.tasks
WHERE recurring_identifier = 'retention.clean_up_old_tasks' AND state IN ('waiting', 'running')
"""


class Processor:
    """A ``run-task-processor`` subprocess in a session of its own."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *args: str,
        tasks: Sequence[str] = ("processor_tasks",),
        env: dict | None = None,
    ) -> None:
        self.database_url = database_url
        self.log_path = log_path
        command = [sys.executable, "-m", "supervisor.cli"]
        for module in tasks:
            command += ["--tasks", module]
        command += list(args)
        environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
            **(env or {}),
        }
        self.log = open(log_path, "ab")  # noqa: SIM115 - the process's log, closed by stop()
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid

    def worker_pids(self) -> list[int]:
        try:
            return sorted(
                child.pid
                for child in psutil.Process(self.pid).children()
                if child.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> dict[int, tuple[int, str, int | None]]:
        """slot -> (pid, state, task_id), from the database rows of this processor."""
        rows = query(
            self.database_url,
            """
            SELECT w.slot, w.pid, w.state, w.task_id FROM task_processor.workers w
            JOIN task_processor.processors p ON p.id = w.processor_id
            WHERE p.pid = %s AND p.state <> 'stopped'""",
            (self.pid,),
        )
        return {slot: (pid, state, task_id) for slot, pid, state, task_id in rows}

    def wait_ready(self, count: int, timeout: float = 20.0) -> list[int]:
        """Wait until ``count`` workers have started (the supervisor wrote their row) and
        the built-in clean-up that a processor runs at its first start is over, so that a test
        finds its workers idle."""

        def ready():
            rows = self.workers()
            live = set(self.worker_pids())
            return (
                len(rows) >= count
                and {pid for pid, _, _ in rows.values()} <= live
                and not query(self.database_url, _START_UP_WORK)
                and sorted(live)
            )

        return wait_for(ready, timeout, message=f"{count} workers ready")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kill the whole session (supervisor and workers) and reap."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        reap_orphans()
        self.log.close()


def task_states(url: str, prefix: str = "processor_tasks.") -> dict[str, int]:
    """Task counts per state, of the tasks whose identifier starts with ``prefix`` (the
    built-in recurring tasks of the processor are left out)."""
    return dict(
        query(
            url,
            "SELECT state, count(*) FROM task_processor.tasks "
            "WHERE starts_with(identifier, %s) GROUP BY state",
            (prefix,),
        )
    )
