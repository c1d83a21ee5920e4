"""Helpers of the health and API tests: real processes, and bounded waits for them.

(Named test_* only to sit with the tests it serves; it holds no tests itself.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
GRACE_MS = 2000


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1,
               what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def environment(database_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TASK_PROCESSOR_", "ENABLE_TASK_PROCESSOR"))}
    env.update(DATABASE_URL=database_url, PYTHONUNBUFFERED="1", **extra)
    return env


def stop_group(process: subprocess.Popen) -> None:
    """Kill a process started with ``start_new_session=True`` and everything it started."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=10)


# -- check-health ------------------------------------------------------------------------------

def check_health(database_url: str, *arguments: str,
                 timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BIN / "check-health"), *arguments],
                          env=environment(database_url), capture_output=True, text=True,
                          timeout=timeout)


def health_status(database_url: str, *arguments: str) -> int:
    return check_health(database_url, *arguments).returncode


# -- run-task-processor ---------------------------------------------------------------------

@contextmanager
def running_processor(database_url: str, *extra: str, workers: int = 2,
                      grace_ms: int = GRACE_MS) -> Iterator[subprocess.Popen]:
    """A live ``run-task-processor`` whose heartbeat rows are written; killed afterwards."""
    command = [sys.executable, str(BIN / "run-task-processor"), "--numthreads", str(workers),
               "--sleepintervalms", "200", "--graceperiodms", str(grace_ms),
               "--queuepopsize", "1", "--drain-timeout", "2", *extra]
    process = subprocess.Popen(command, env=environment(database_url), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: process.poll() is not None or len(worker_rows(database_url, process))
                   == workers, what="the processor's workers to report")
        assert process.poll() is None, f"run-task-processor exited with {process.returncode}"
        yield process
    finally:
        stop_group(process)


def _query(database_url: str, sql: str, params: tuple = ()) -> list[tuple]:
    connection = psycopg2.connect(database_url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        connection.close()


def processor_id(database_url: str, process: subprocess.Popen) -> str:
    rows = _query(database_url, "SELECT id FROM task_processor.processors WHERE pid = %s "
                                "ORDER BY started_at DESC LIMIT 1", (process.pid,))
    return rows[0][0]


def worker_rows(database_url: str, process: subprocess.Popen) -> list[tuple[int, int, int]]:
    """(slot, pid, generation) of the processor's workers that have beaten."""
    return _query(database_url, """
        SELECT w.slot, w.pid, w.generation FROM task_processor.workers w
        JOIN task_processor.processors p ON p.id = w.processor_id
        WHERE p.pid = %s ORDER BY w.slot""", (process.pid,))


# -- run-api ------------------------------------------------------------------------------------

class ApiServer:
    """A ``run-api`` process on a free port, and requests to it over real HTTP."""

    def __init__(self, database_url: str, **settings: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BIN / "run-api"), "--bind", "127.0.0.1:0"],
            env=environment(database_url, **settings), start_new_session=True,
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.log: list[str] = []
        self._address = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        self._address.wait(20)
        found = [re.search(r"listening on (http://\S+)", line) for line in self.log]
        addresses = [match[1] for match in found if match]
        if not addresses:
            stop_group(self.process)
            raise AssertionError(f"run-api did not start: {''.join(self.log)}")
        self.base = addresses[0]

    def _read_log(self) -> None:
        """Keep stderr drained (a full pipe would block the server) and spot the address."""
        for line in self.process.stderr:
            self.log.append(line)
            if "listening on" in line:
                self._address.set()
        self._address.set()

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body) of a request; errors are answers too."""
        request = urllib.request.Request(self.base + path, headers=headers or {},
                                         method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, head, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, head, raw = error.code, dict(error.headers), error.read()
        return status, head, json.loads(raw) if raw else None

    def close(self) -> None:
        stop_group(self.process)


@contextmanager
def api_server(database_url: str, **settings: str) -> Iterator[ApiServer]:
    server = ApiServer(database_url, **settings)
    try:
        yield server
    finally:
        server.close()
