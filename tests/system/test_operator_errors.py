"""What an operator sees for the mistakes of a first week: one line, the right exit status, and
never a password: a password that libpq reads as part of the host, a host given as a URL
parameter, a database that refuses the connection, a bad Sentry DSN, a config file that is not
UTF-8, a task module that is missing or defines no task, a task row that cannot be decoded."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from clusters import Cluster, server_programs_missing
from commands import admin
from databases import drop_database, fetch_all, insert_task, url_for
from harness import REPO, SUPPORT, wait_for

from common import db, redaction
from common.config import EX_CONFIG, OPTIONS, build_parser, parse_args

PASSWORD = "S3cretPW-k9"


def run(
    command: str, *args: str, timeout: float = 60, **environment: str
) -> subprocess.CompletedProcess:
    """``bin/<command> args`` with this checkout on the path and extra environment."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASK_PROCESSOR_", "SENTRY_", "PG"))
    }
    env.update({"PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]), **environment})
    return subprocess.run(
        [sys.executable, str(REPO / "bin" / command), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess, prog: str) -> str:
    """The single line a refused command prints, checked to be one line without traceback."""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{prog}: "), result.stderr
    return result.stderr


# -- passwords in the driver's messages -----------------------------------------------------


def test_a_driver_message_that_quotes_part_of_the_password_is_scrubbed():
    """libpq reads an unencoded @ as the end of the password and says so in its message."""
    url = f"postgresql://postgres:p@{PASSWORD}@127.0.0.1:5432/appdb"
    with pytest.raises(db.DatabaseUnavailable) as down:
        db.connect(url, "test", connect_timeout=2)
    assert PASSWORD not in str(down.value)
    assert "could not translate host name" in str(down.value)


def test_a_password_with_an_unencoded_at_sign_is_a_configuration_error():
    url = f"postgresql://postgres:p@{PASSWORD}@127.0.0.1:5432/appdb"
    result = run("task-processor", "status", DATABASE_URL=url)
    assert result.returncode == EX_CONFIG
    line = one_line(result, "task-processor")
    assert PASSWORD not in line and "write @ as %40" in line


@pytest.mark.parametrize("shape", ["user part", "percent-encoded", "query", "keyword/value"])
def test_every_shape_of_password_is_known_to_the_scrubber(shape):
    url = {
        "user part": f"postgresql://app:{PASSWORD}@db/app",
        "percent-encoded": f"postgresql://app:{PASSWORD}%2Fx@db/app",
        "query": f"postgresql://db/app?user=app&password={PASSWORD}",
        "keyword/value": f"host=db dbname=app user=app password='{PASSWORD} x'",
    }[shape]
    redaction.remember_database(url)
    decoded = PASSWORD + {"percent-encoded": "/x", "keyword/value": " x"}.get(shape, "")
    assert PASSWORD not in redaction.scrub(f"libpq said: {decoded!r}, then {url}")


def test_pgpassword_is_scrubbed(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert redaction.scrub(f"server said {PASSWORD}") == "server said ***"


# -- the database shown is the one libpq uses --------------------------------------------------


def test_the_host_shown_is_the_host_parameter_that_libpq_uses():
    result = run(
        "task-processor",
        "status",
        DATABASE_URL=("postgresql://127.0.0.1:5432/appdb?user=postgres&host=other.invalid"),
    )
    assert result.returncode == 1
    assert "database 'appdb' on other.invalid:5432" in one_line(result, "task-processor")


def test_a_keyword_value_connection_string_is_accepted(database_url):
    name = database_url.rsplit("/", 1)[1]
    result = run(
        "task-processor",
        "status",
        DATABASE_URL=(
            f"host=127.0.0.1 port=5432 dbname={name} user=postgres password='{PASSWORD}'"
        ),
    )
    assert result.returncode == 0, result.stderr
    assert "waiting" in result.stdout and PASSWORD not in result.stdout + result.stderr


# -- a database that refuses the connection --------------------------------------------------

REFUSALS = {
    "missing database": (
        url_for("tp_no_such_database"),
        'database "tp_no_such_database" does not exist',
        "createdb",
    ),
    "missing role": (
        url_for("postgres").replace("postgres@", f"tp_no_such_role:{PASSWORD}@"),
        'role "tp_no_such_role" does not exist',
        "CREATE ROLE",
    ),
}


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_refusal_at_start_of_the_processor_exits_78_saying_how_to_fix_it(refusal):
    url, reason, fix = REFUSALS[refusal]
    result = run("run-task-processor", "--tasks", "processor_tasks", DATABASE_URL=url)
    assert result.returncode == EX_CONFIG
    line = one_line(result, "run-task-processor")
    assert reason in line and fix in line and PASSWORD not in line


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_refusal_at_start_of_the_admin_command_and_the_api_exits_78(refusal):
    url, reason, _ = REFUSALS[refusal]
    for command, args in (("task-processor", ["status"]), ("run-api", ["--bind", "127.0.0.1:0"])):
        result = run(command, *args, DATABASE_URL=url)
        assert result.returncode == EX_CONFIG, result.stderr
        assert reason in result.stderr.splitlines()[-1] and PASSWORD not in result.stderr


@pytest.fixture
def guarded() -> Iterator[Cluster]:
    """A server of the test's own that asks for a password over TCP."""
    missing = server_programs_missing()
    if missing:
        pytest.skip(missing)
    cluster = Cluster("guarded").init_primary(password="the-right-one").start()
    try:
        yield cluster
    finally:
        cluster.stop(remove=True)


def test_a_refused_password_at_start_exits_78_saying_how_to_fix_it(guarded):
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{guarded.port}/postgres"
    for command, args in (
        ("run-task-processor", ["--tasks", "processor_tasks"]),
        ("task-processor", ["status"]),
        ("run-api", ["--bind", "127.0.0.1:0"]),
    ):
        result = run(command, *args, DATABASE_URL=url)
        assert result.returncode == EX_CONFIG, result.stderr
        line = one_line(result, command)
        assert "password authentication failed" in line, line
        assert "fix the password in the database URL (or PGPASSWORD)" in line
        assert PASSWORD not in result.stdout + result.stderr


def test_a_refusal_during_a_run_is_retried(database_url, start_processor):
    """A failover can briefly refuse: the processor keeps trying instead of exiting."""
    processor = start_processor("--numthreads", "1")
    processor.wait_ready(1)
    drop_database(database_url.rsplit("/", 1)[1])
    wait_for(
        lambda: (
            "refused the connection" in processor.log_text() and "retrying" in processor.log_text()
        ),
        timeout=30,
        message="a retried refusal",
    )
    assert processor.process.poll() is None


# -- options and files -----------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for option in OPTIONS.values():
        if option.env:
            monkeypatch.delenv(option.env, raising=False)


def refused(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse_args(build_parser("run-task-processor", "test", list(OPTIONS)), argv)
    assert exit_.value.code == EX_CONFIG
    message = capsys.readouterr().err
    assert message.startswith("run-task-processor: configuration error: ")
    assert message.count("\n") == 1
    return message


def test_a_bad_sentry_dsn_exits_78_naming_the_option(capsys, clean_environment):
    message = refused(capsys, "--sentry-dsn", "notadsn")
    assert "--sentry-dsn" in message and "https://KEY@HOST/PROJECT_ID" in message
    result = run("run-task-processor", "--sentry-dsn", "notadsn", DATABASE_URL=url_for("x"))
    assert result.returncode == EX_CONFIG and "--sentry-dsn" in one_line(
        result, "run-task-processor"
    )


def test_a_config_file_that_is_not_utf8_exits_78_in_one_line(
    capsys, clean_environment, tmp_path: Path
):
    config_file = tmp_path / "processor.conf"
    config_file.write_bytes("numthreads = 2\n# café\n".encode("latin-1"))
    message = refused(capsys, "--config", str(config_file))
    assert str(config_file) in message and "not UTF-8" in message


# -- task modules ------------------------------------------------------------------------------


def test_a_missing_task_module_gets_one_line_without_traceback():
    result = run("run-task-processor", "--tasks", "no_such_module_here", DATABASE_URL=url_for("x"))
    assert result.returncode == EX_CONFIG
    assert "no module 'no_such_module_here'" in one_line(result, "run-task-processor")


def test_a_task_module_that_raises_keeps_its_traceback(tmp_path: Path):
    (tmp_path / "broken_tasks.py").write_text("import no_such_dependency_here\n")
    result = run(
        "run-task-processor",
        "--tasks",
        "broken_tasks",
        DATABASE_URL=url_for("x"),
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(SUPPORT), str(REPO)]),
    )
    assert result.returncode == EX_CONFIG
    assert "Traceback" in result.stderr and "broken_tasks.py" in result.stderr
    assert "No module named 'no_such_dependency_here'" in result.stderr.splitlines()[-1]


def test_a_task_module_that_defines_no_task_is_refused_at_start(database_url):
    result = run("run-task-processor", "--tasks", "json", DATABASE_URL=database_url)
    assert result.returncode == EX_CONFIG
    assert "task module 'json' defines no task" in one_line(result, "run-task-processor")


# -- a task row that cannot be decoded ----------------------------------------------------------


def test_show_prints_arguments_too_deep_to_decode(database_url, conn):
    task_id = insert_task(conn)
    deep = "[" * 5000 + "]" * 5000
    fetch_all(
        conn,
        "UPDATE task_processor.tasks SET args = %s::jsonb WHERE id = %s RETURNING id",
        (deep, task_id),
    )
    result = admin("show", str(task_id))
    assert result.returncode == 0, result.stderr[-500:]
    assert deep in result.stdout


# -- Sentry events -------------------------------------------------------------------------------


class _Collector(BaseHTTPRequestHandler):
    """A Sentry ingestion endpoint that keeps every envelope it receives."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sentry_collector() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://publickey123@127.0.0.1:{server.server_address[1]}/1", received
    finally:
        server.shutdown()
        server.server_close()


SENTRY_SCRIPT = """
import logging, os, sentry_sdk
from common import logs, sentry
logs.configure("INFO", "json")
sentry.init(os.environ["SENTRY_DSN"], "test")
url = os.environ["DATABASE_URL"]
logging.getLogger("test").error("cannot reach %s", url)
try:
    raise RuntimeError("connection to " + url + " failed")
except RuntimeError:
    logging.getLogger("test").exception("while connecting")
sentry_sdk.flush(10)
"""


def test_sentry_events_carry_no_secret(sentry_collector):
    dsn, received = sentry_collector
    env = {key: value for key, value in os.environ.items() if not key.startswith("SENTRY_")}
    env.update(
        PYTHONPATH=str(REPO),
        SENTRY_DSN=dsn,
        DATABASE_URL=f"postgresql://app:{PASSWORD}@db.invalid/app",
    )
    result = subprocess.run(
        [sys.executable, "-c", SENTRY_SCRIPT],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(received) >= 2, timeout=20, message="two Sentry events")
    events = b"".join(received)
    assert b"cannot reach" in events and b"while connecting" in events
    assert PASSWORD.encode() not in events and b"publickey123" not in events
    assert PASSWORD not in result.stderr
