"""The embedded PostgreSQL server: the real commands with no database URL and no PG*
variables, each test in a fresh data directory, as on a machine without any server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from harness import REPO, SUPPORT, query, reap_orphans, wait_for

from common import db, embedded_postgres

BIN = REPO / "bin"
NOTICE = "no database configured: using the embedded PostgreSQL server, data in"


class Machine:
    """Commands run as a new user would run them: no database configured anywhere."""

    def __init__(self, tmp_path: Path, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.greetings = tmp_path / "greetings.txt"
        self.tmp_path = tmp_path
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PG")
            and key not in ("DATABASE_URL", "TASK_PROCESSOR_DATABASE_URL")
        }
        self.env.update(
            TASK_PROCESSOR_DATA_DIR=str(self.data_dir),
            TASK_RUN_METHOD="TASK_PROCESSOR",
            EXAMPLE_GREETINGS_FILE=str(self.greetings),
            PYTHONPATH=os.pathsep.join([str(SUPPORT), str(REPO)]),
        )
        self.processors: list[subprocess.Popen] = []

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *command],
            cwd=REPO,
            env=self.env,
            check=False,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def command(self, name: str, *args: str) -> subprocess.CompletedProcess:
        return self.run(str(BIN / name), *args)

    def start_processor(self) -> subprocess.Popen:
        with open(self.tmp_path / f"processor-{len(self.processors)}.log", "ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    str(BIN / "run-task-processor"),
                    "--tasks",
                    "examples.tasks",
                    "--numthreads",
                    "2",
                ],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processors.append(process)
        return process

    def api_health(self) -> tuple[int, dict, str]:
        """``GET /health?format=json`` from a ``run-api`` with no database configured; its
        status, body and log."""
        api = subprocess.Popen(
            [sys.executable, str(BIN / "run-api"), "--bind", "127.0.0.1:0"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            log = ""
            while (found := re.search(r"listening on (http://\S+)", log)) is None:
                line = api.stderr.readline()
                assert line, f"run-api did not start: {log}"
                log += line
            address = found[1]
            with urllib.request.urlopen(f"{address}/health?format=json", timeout=30) as answer:
                return answer.status, json.loads(answer.read()), log
        finally:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(10)

    def log(self, process: subprocess.Popen) -> str:
        index = self.processors.index(process)
        return (self.tmp_path / f"processor-{index}.log").read_text(errors="replace")

    def url(self) -> str:
        server = embedded_postgres.find_running(self.data_dir)
        assert server is not None, f"no embedded server runs in {self.data_dir}"
        return server.url

    def greet(self, name: str) -> None:
        """``.delay()`` in an application process that configures no database either."""
        result = self.run("-c", f"from examples.tasks import greet; greet.delay(args=({name!r},))")
        assert result.returncode == 0, result.stderr

    def wait_for_greeting(self, name: str, timeout: float = 30.0) -> None:
        wait_for(
            lambda: self.greetings.exists() and f"Hello, {name}!" in self.greetings.read_text(),
            timeout,
            message=f"the greeting of {name}",
        )

    def wait_ready(self, process: subprocess.Popen) -> None:
        wait_for(
            lambda: "ready: 2 workers" in self.log(process) or process.poll() is not None,
            60,
            message="the processor to be ready",
        )
        assert process.poll() is None, self.log(process)

    def postmasters(self) -> list[int]:
        """The postmasters working in this data directory (backends are their children)."""
        pgdata = (self.data_dir / "postgres").resolve()
        found = []
        for process in psutil.process_iter(["cwd", "ppid"]):
            if process.info["cwd"] and Path(process.info["cwd"]) == pgdata:
                try:
                    parent_cwd = psutil.Process(process.info["ppid"]).cwd()
                except psutil.Error:
                    parent_cwd = None
                if parent_cwd is None or Path(parent_cwd) != pgdata:
                    found.append(process.pid)
        return found

    def clean_up(self) -> None:
        for process in self.processors:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)
        if self.data_dir.exists():
            embedded_postgres.stop(self.data_dir)
        reap_orphans()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data directory. Not under tmp_path: as root, the server runs as an account of its
    own that must traverse every parent, and each pytest session resets its base temporary
    directory to mode 0700 (sessions of other checkouts too, at any moment)."""
    path = Path(tempfile.mkdtemp(prefix="task-processor-test-")) / "data"
    try:
        yield path
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
def machine(tmp_path: Path, data_dir: Path) -> Iterator[Machine]:
    machine = Machine(tmp_path, data_dir)
    try:
        yield machine
    finally:
        machine.clean_up()


@pytest.mark.slow
def test_the_readme_commands_run_the_examples_and_a_second_run_keeps_the_data(machine):
    migrate = machine.command("task-processor", "migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert f"{NOTICE} {machine.data_dir}" in migrate.stderr
    assert "set DATABASE_URL" in migrate.stderr

    enqueue = machine.run("-m", "examples.enqueue")
    assert enqueue.returncode == 0, enqueue.stderr
    assert "queued 10 tasks" in enqueue.stdout

    processor = machine.start_processor()
    machine.wait_for_greeting("later")  # the delayed one, 3 s after enqueueing
    assert machine.log(processor).count(NOTICE) == 1
    url = machine.url()
    wait_for(
        lambda: (
            query(
                url,
                "SELECT state FROM task_processor.tasks WHERE identifier = 'tasks.count_slowly'",
            )
            == [("succeeded",)]
        ),
        30,
        message="count_slowly to succeed",
    )
    machine.wait_ready(processor)
    health = machine.command("check-health")
    assert health.returncode == 0, health.stdout + health.stderr
    assert "healthy" in health.stdout and NOTICE in health.stderr
    status, body, api_log = machine.api_health()
    assert status == 200, body
    assert NOTICE in api_log
    processor.send_signal(signal.SIGTERM)
    assert processor.wait(30) == 0
    assert machine.greetings.read_text().count("!\n") == 8

    # Everything stops (a reboot, say); the next run finds the same data.
    first_postmaster = machine.postmasters()
    assert machine.command("task-processor", "embedded", "stop").returncode == 0
    assert machine.postmasters() == []
    machine.greet("again")
    assert machine.postmasters() not in ([], first_postmaster)
    processor = machine.start_processor()
    machine.wait_for_greeting("again")
    url = machine.url()
    # The greeting is the task's own doing; its success is recorded a moment later, with the
    # worker's next claim.
    wait_for(
        lambda: (
            query(
                url,
                "SELECT count(*) FROM task_processor.tasks "
                "WHERE identifier = 'tasks.greet' AND state = 'succeeded'",
            )
            == [(9,)]
        ),
        30,
        message="the nine greetings recorded as succeeded",
    )
    status = machine.command("task-processor", "status")
    assert status.returncode == 0 and "succeeded" in status.stdout


def _kill_processor(machine: Machine, processor: subprocess.Popen) -> None:
    os.killpg(processor.pid, signal.SIGKILL)
    processor.wait(10)


def _kill_processor_and_server(machine: Machine, processor: subprocess.Popen) -> None:
    (postmaster,) = machine.postmasters()
    _kill_processor(machine, processor)
    os.kill(postmaster, signal.SIGKILL)
    wait_for(
        lambda: (
            not psutil.pid_exists(postmaster)
            or psutil.Process(postmaster).status() == psutil.STATUS_ZOMBIE
        ),
        10,
        message="the postmaster to die",
    )
    reap_orphans()
    assert (machine.data_dir / "postgres" / "postmaster.pid").exists()  # left behind


def _kill_both_and_reuse_the_pid(machine: Machine, processor: subprocess.Popen) -> None:
    """As after a container restart: the stale postmaster.pid and socket lock name a pid that
    now belongs to another live process of the server's account, which PostgreSQL alone takes
    for a server still running."""
    _kill_processor_and_server(machine, processor)
    account = embedded_postgres.SERVER_ACCOUNT_WHEN_ROOT if os.geteuid() == 0 else None
    stranger = subprocess.Popen(["sleep", "120"], user=account, start_new_session=True)
    machine.processors.append(stranger)  # killed at the end
    pid_file = machine.data_dir / "postgres" / "postmaster.pid"
    socket_dir = Path(pid_file.read_text().splitlines()[4])
    for path in (pid_file, socket_dir / ".s.PGSQL.5432.lock"):
        lines = path.read_text().splitlines()
        path.write_text("\n".join([str(stranger.pid), *lines[1:]]) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash",
    [_kill_processor, _kill_processor_and_server, _kill_both_and_reuse_the_pid],
    ids=["processor", "processor-and-server", "pid-reused"],
)
def test_a_processor_killed_with_sigkill_leaves_nothing_that_blocks_the_next_start(
    machine, crash: Callable[[Machine, subprocess.Popen], None]
):
    assert machine.command("task-processor", "migrate").returncode == 0
    processor = machine.start_processor()
    machine.wait_ready(processor)
    survivor = machine.postmasters()

    crash(machine, processor)

    machine.greet("after the crash")
    processor = machine.start_processor()
    machine.wait_for_greeting("after the crash")
    if crash is _kill_processor:
        assert machine.postmasters() == survivor  # the server outlived its starter
    assert len(machine.postmasters()) == 1


@pytest.mark.slow
def test_two_processors_starting_at_once_share_one_server(machine):
    first, second = machine.start_processor(), machine.start_processor()
    machine.wait_ready(first)
    machine.wait_ready(second)
    assert len(machine.postmasters()) == 1
    url = machine.url()
    for process in (first, second):
        assert f"workers on {db.describe(url)}" in machine.log(process)
    assert query(
        url, "SELECT count(*) FROM task_processor.processors WHERE state <> 'stopped'"
    ) == [(2,)]


def test_a_configured_url_wins_over_the_embedded_server(database_url, tmp_path):
    machine = Machine(tmp_path, tmp_path / "data")
    machine.env["DATABASE_URL"] = database_url
    status = machine.command("task-processor", "status")
    assert status.returncode == 0, status.stderr
    assert NOTICE not in status.stderr
    assert not machine.data_dir.exists()
