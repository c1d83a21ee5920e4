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
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import query

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"
GRACE_MS = 2000


def environment(database_url: str, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASK_PROCESSOR_", "ENABLE_TASK_PROCESSOR"))
    }
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


def check_health(
    database_url: str, *arguments: str, timeout: float = 30
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BIN / "check-health"), *arguments],
        env=environment(database_url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def health_status(database_url: str, *arguments: str) -> int:
    return check_health(database_url, *arguments).returncode


# -- run-task-processor (started with the ``start_processor`` fixture) ----------------------

# Short periods, so that staleness shows within seconds.
PROCESSOR_ARGS = (
    "--numthreads",
    "2",
    "--sleepintervalms",
    "200",
    "--graceperiodms",
    str(GRACE_MS),
    "--queuepopsize",
    "1",
    "--drain-timeout",
    "2",
)


def processor_id(database_url: str, pid: int) -> str:
    rows = query(
        database_url,
        "SELECT id FROM task_processor.processors WHERE pid = %s ORDER BY started_at DESC LIMIT 1",
        (pid,),
    )
    return rows[0][0]


# -- run-api ------------------------------------------------------------------------------------


class ApiServer:
    """A ``run-api`` process on a free port, and requests to it over real HTTP."""

    def __init__(self, database_url: str, bind: str = "127.0.0.1:0", **settings: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BIN / "run-api"), "--bind", bind],
            env=environment(database_url, **settings),
            start_new_session=True,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
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

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body) of a request; errors are answers too."""
        status, head, raw = self.raw(path, headers, method)
        return status, head, json.loads(raw) if raw else None

    def raw(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        data: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body bytes) of a request, redirects not followed."""
        request = urllib.request.Request(
            self.base + path, headers=headers or {}, method=method, data=data
        )
        try:
            with _NO_REDIRECTS.open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def close(self) -> None:
        stop_group(self.process)


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 303 is an answer to look at, not to follow


_NO_REDIRECTS = urllib.request.build_opener(_KeepRedirects)


@contextmanager
def api_server(
    database_url: str, bind: str = "127.0.0.1:0", **settings: str
) -> Iterator[ApiServer]:
    server = ApiServer(database_url, bind, **settings)
    try:
        yield server
    finally:
        server.close()
