"""Every command, in every log format, with a password-bearing database URL of every shape:
the password (and the monitoring token) appear nowhere in what they print, answer over HTTP
or show as their process title; against a database that works, one that refuses the
connection and one that cannot be reached."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from databases import insert_task, url_for
from harness import REPO, SUPPORT, wait_for

PASSWORD = "Pw-7q4Zsweep"
TOKEN = "Tok-93jdsweep"

SHAPES = {
    "user part": ("postgresql://postgres:{pw}@127.0.0.1:5432/{db}", {}),
    "percent-encoded": ("postgresql://postgres:{pw}%2F%40x@127.0.0.1:5432/{db}", {}),
    "unencoded @": ("postgresql://postgres:p@{pw}@127.0.0.1:5432/{db}", {}),
    "query": ("postgresql://127.0.0.1:5432/{db}?user=postgres&password={pw}", {}),
    "keyword/value": ("host=127.0.0.1 port=5432 dbname={db} user=postgres password='{pw}'", {}),
    "PGPASSWORD": ("postgresql://postgres@127.0.0.1:5432/{db}", {"PGPASSWORD": PASSWORD}),
}
LOG_FORMATS = ("text", "json")


class Sweep:
    """Runs commands with one URL and keeps everything they print, answer and show."""

    def __init__(self, url: str, extra_env: dict[str, str], tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TASK_PROCESSOR_", "SENTRY_", "PG", "DATABASE_"))
        }
        self.env.update(
            PYTHONPATH=os.pathsep.join([str(SUPPORT), str(REPO)]),
            PYTHONUNBUFFERED="1",
            TASK_PROCESSOR_MONITORING_TOKEN=TOKEN,
            DATABASE_URL=url,
            **extra_env,
        )
        self.seen: list[str] = []

    def command(self, name: str, *args: str) -> list[str]:
        return [sys.executable, str(REPO / "bin" / name), *args]

    def run(self, name: str, *args: str) -> None:
        result = subprocess.run(
            self.command(name, *args),
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        self.seen += [
            f"$ {name} {' '.join(args)} -> {result.returncode}",
            result.stdout,
            result.stderr,
        ]

    def serve(self, name: str, ready: str, *args: str, visit=None) -> None:
        """Start a long-running command with the URL on its command line, wait for ``ready``
        in its output (or its exit), record its titles, let ``visit`` talk to it, stop it."""
        log_path = self.tmp_path / f"{name}-{len(self.seen)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                self.command(name, "--database-url", self.url, *args),
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(
                lambda: (
                    any(
                        marker in log_path.read_text(errors="replace")
                        for marker in (ready, "retrying")
                    )
                    or process.poll() is not None
                ),
                timeout=60,
                message=f"{name}: {ready}",
            )
            if process.poll() is None:
                self.seen += _titles(process.pid)
                if visit:
                    self.seen += visit(log_path.read_text(errors="replace"))
                process.send_signal(signal.SIGTERM)
            process.wait(30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.seen.append(log_path.read_text(errors="replace"))

    def every_command(self, task_id: int | None) -> None:
        for fmt in LOG_FORMATS:
            self.serve(
                "run-task-processor",
                " ready: ",
                "--tasks",
                "processor_tasks",
                "--numthreads",
                "1",
                "--log-format",
                fmt,
                "--log-level",
                "DEBUG",
            )
            self.serve(
                "run-api",
                "listening on",
                "--bind",
                "127.0.0.1:0",
                "--log-format",
                fmt,
                "--log-level",
                "DEBUG",
                visit=_http_answers,
            )
        for args in (
            ["migrate"],
            ["status"],
            ["status", "--json"],
            ["list"],
            ["list", "--state", "dead"],
            ["show", str(task_id or 1)],
            ["requeue", "--dead"],
            ["tasks", "--tasks", "processor_tasks"],
        ):
            self.run("task-processor", *args)
        self.run("check-health")
        self.run("check-health", "--json", "--all")

    def assert_nothing_secret(self) -> None:
        text = "\n".join(self.seen)
        assert PASSWORD not in text and TOKEN not in text, _around(text, PASSWORD, TOKEN)


def _titles(pid: int) -> list[str]:
    """The command lines (process titles) of a process and its children."""
    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    titles = []
    for process in processes:
        try:
            titles.append(" ".join(process.cmdline()))
        except psutil.Error:
            pass
    return titles


def _http_answers(log: str) -> list[str]:
    base = log.split("listening on ", 1)[1].split()[0]
    answers = []
    for path, headers in (
        ("/health", {}),
        ("/health?format=json", {}),
        ("/health?format=xml", {}),
        ("/processor/monitoring", {}),
        ("/processor/monitoring", {"Authorization": "Bearer wrong"}),
        ("/processor/monitoring", {"Authorization": f"Bearer {TOKEN}"}),
        ("/nowhere", {}),
    ):
        request = urllib.request.Request(base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answers.append(f"{response.status} {response.headers} {response.read()!r}")
        except urllib.error.HTTPError as error:
            answers.append(f"{error.code} {error.headers} {error.read()!r}")
    return answers


def _around(text: str, *secrets: str) -> str:
    """Where a secret showed up, for the failure message."""
    for secret in secrets:
        at = text.find(secret)
        if at >= 0:
            return text[max(0, at - 300) : at + 100]
    return ""


@pytest.fixture
def closed_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("target", ["working", "refusing", "unreachable"])
@pytest.mark.parametrize("shape", SHAPES)
def test_no_command_shows_a_password(shape, target, database_url, conn, closed_port, tmp_path):
    template, extra_env = SHAPES[shape]
    name = {"working": database_url.rsplit("/", 1)[1], "refusing": "tp_sweep_no_such_database"}.get(
        target, "appdb"
    )
    url = template.format(pw=PASSWORD, db=name)
    if target == "unreachable":
        url = url.replace("5432", str(closed_port))
    # A task whose recorded error quotes the URL, as a careless task might.
    task_id = insert_task(conn, state="dead", error=f"OperationalError: cannot reach {url}")
    sweep = Sweep(url, extra_env, tmp_path)
    sweep.every_command(task_id)
    sweep.assert_nothing_secret()
    if shape != "unencoded @":  # refused at start as a configuration error, by every command
        expected = {
            "working": " ready: ",
            "refusing": "refused the connection",
            "unreachable": "Connection refused",
        }[target]
        assert expected in "\n".join(sweep.seen)


def test_the_sweep_sees_a_password_where_one_is_printed(tmp_path):
    """The sweep itself can fail: a command that prints its URL is caught."""
    sweep = Sweep(url_for("postgres").replace("postgres@", f"postgres:{PASSWORD}@"), {}, tmp_path)
    sweep.seen.append(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ['DATABASE_URL'])"],
            env=sweep.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    )
    with pytest.raises(AssertionError):
        sweep.assert_nothing_secret()
