"""``check-health`` as a real subprocess: against heartbeat rows of known ages, and against
live processors that are frozen, replaced, stopped and killed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sysconfig
import time
from datetime import UTC
from pathlib import Path

import pytest
from api_support import (
    GRACE_MS,
    PROCESSOR_ARGS,
    check_health,
    environment,
    health_status,
    processor_id,
)
from harness import query, wait_for

HOST = socket.gethostname()


def add_processor(
    conn,
    processor: str = "p1",
    *,
    beat_age: float = 0.1,
    started_age: float = 60,
    workers: int = 2,
    grace_ms: int = GRACE_MS,
    state: str = "running",
    host: str = HOST,
) -> None:
    """A processor row whose heartbeat is ``beat_age`` seconds old on the database clock."""
    with conn.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO task_processor.processors
                (id, host, pid, started_at, last_beat_at, num_workers, grace_period_ms, state,
                 stopped_at)
            VALUES (%s, %s, 4242, now() - make_interval(secs => %s),
                    now() - make_interval(secs => %s), %s, %s, %s,
                    CASE WHEN %s = 'stopped' THEN now() END)""",
            (processor, host, started_age, beat_age, workers, grace_ms, state, state),
        )


def add_worker(
    conn,
    slot: int,
    processor: str = "p1",
    *,
    state: str = "idle",
    beat_age: float = 0.1,
    deadline_in: float | None = None,
    task_id: int | None = None,
) -> None:
    with conn.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO task_processor.workers
                (processor_id, slot, pid, generation, state, task_id, task_deadline, last_beat_at)
            VALUES (%s, %s, %s, 3, %s, %s, now() + make_interval(secs => %s),
                    now() - make_interval(secs => %s))""",
            (processor, slot, 5000 + slot, state, task_id, deadline_in, beat_age),
        )


def add_healthy_processor(conn, processor: str = "p1", **options) -> None:
    add_processor(conn, processor, **options)
    for slot in range(options.get("workers", 2)):
        add_worker(conn, slot, processor)


def started_at(database_url: str) -> str:
    """The processor's start time as check-health prints it (UTC, milliseconds)."""
    (moment,) = query(database_url, "SELECT started_at FROM task_processor.processors")[0]
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def verdict(database_url: str, *arguments: str) -> tuple[int, str]:
    result = check_health(database_url, *arguments)
    assert result.stdout.count("\n") == 1, result.stdout + result.stderr  # one line
    return result.returncode, result.stdout.strip()


def test_fresh_supervisor_and_workers_are_healthy(database_url, conn):
    add_healthy_processor(conn)
    status, line = verdict(database_url)
    assert status == 0
    assert line.startswith("healthy: processor p1 (pid 4242 on") and "2 workers" in line


def test_a_stale_supervisor_heartbeat_is_unhealthy(database_url, conn):
    add_healthy_processor(conn, beat_age=5)
    status, line = verdict(database_url)
    assert status == 1
    assert "processor p1" in line and "supervisor heartbeat" in line
    assert "grace period of 2 s" in line


def test_an_idle_worker_without_a_recent_beat_is_named_with_since_when(database_url, conn):
    add_processor(conn)
    add_worker(conn, 0)
    add_worker(conn, 1, beat_age=7.5)
    status, line = verdict(database_url)
    assert status == 1
    assert line.startswith(
        "unhealthy: worker 1 (pid 5001, generation 3) of processor p1: idle since "
    )
    age = float(
        re.search(r"no heartbeat for ([\d.]+) s, longer than the grace period of 2 s", line)[1]
    )
    assert age >= 7.5


def test_a_busy_worker_is_healthy_until_its_deadline_plus_the_grace_period(database_url, conn):
    add_processor(conn, workers=3, grace_ms=5000)  # seconds of margin for a loaded machine
    add_worker(conn, 0)
    with conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO task_processor.tasks (identifier, state) "
            "VALUES ('mail.send', 'running') RETURNING id"
        )
        task_id = cursor.fetchone()[0]
    add_worker(conn, 1, state="busy", beat_age=600, deadline_in=30, task_id=task_id)
    add_worker(conn, 2, state="busy", beat_age=600, deadline_in=-1, task_id=task_id)
    assert health_status(database_url) == 0  # a long task is not a missing heartbeat
    query(
        database_url,
        "UPDATE task_processor.workers SET task_deadline = now() - interval '9 s' WHERE slot = 2",
    )
    status, line = verdict(database_url)
    assert status == 1
    assert "worker 2 (pid 5002, generation 3) of processor p1: busy since" in line
    late = float(
        re.search(rf"on task {task_id} \(mail\.send\), ([\d.]+) s past its deadline", line)[1]
    )
    assert late >= 9


def test_a_slot_that_never_reported_is_unhealthy_once_the_processor_is_past_starting(
    database_url, conn
):
    add_processor(conn, started_age=0.5, grace_ms=5000)  # seconds of margin under load
    add_worker(conn, 0)
    assert health_status(database_url) == 0  # slot 1 may still be booting
    query(database_url, "UPDATE task_processor.processors SET started_at = now() - interval '30 s'")
    assert verdict(database_url) == (
        1,
        (
            "unhealthy: worker 1 of processor p1 has not reported since the processor started"
            f" at {started_at(database_url)}, longer ago than the grace period of 5 s"
        ),
    )


def test_the_newest_processor_of_this_host_is_checked(database_url, conn):
    add_processor(conn, "old", beat_age=300, started_age=900)  # killed long ago
    add_healthy_processor(conn, "new", started_age=60)
    add_processor(conn, "elsewhere", beat_age=300, host="another-host")
    status, line = verdict(database_url)
    assert (status, line.split(" (")[0]) == (0, "healthy: processor new")
    assert verdict(database_url, "--processor-id", "old")[0] == 1
    status, line = verdict(database_url, "--all")
    assert status == 1 and "and 1 more problem" in line


def test_all_processors_must_be_healthy_with_all(database_url, conn):
    add_healthy_processor(conn, "a", started_age=60)
    add_healthy_processor(conn, "b", started_age=30, host="another-host")
    status, line = verdict(database_url, "--all")
    assert status == 0 and "processor a" in line and "processor b" in line
    query(
        database_url,
        "UPDATE task_processor.workers SET last_beat_at = now() - interval "
        "'1 min' WHERE processor_id = 'b' AND slot = 1",
    )
    status, line = verdict(database_url, "--all")
    assert status == 1 and "worker 1 (pid 5001, generation 3) of processor b" in line


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        ("stopped", "stopped at"),
        ("draining", "is draining"),
    ],
)
def test_stopped_and_draining_processors_are_unhealthy(database_url, conn, state, fragment):
    add_healthy_processor(conn, state=state)
    status, line = verdict(database_url, "--processor-id", "p1")
    assert status == 1 and fragment in line


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ((), f"no task processor has ever started on host {HOST}"),
        (("--all",), "no task processor is running"),
        (("--processor-id", "nope"), "no processor with id 'nope'"),
    ],
)
def test_nothing_to_check_is_unhealthy(database_url, arguments, fragment):
    status, line = verdict(database_url, *arguments)
    assert status == 1 and fragment in line


def test_json_prints_the_full_state(database_url, conn):
    add_processor(conn)
    add_worker(conn, 0)
    add_worker(conn, 1, beat_age=10)
    result = check_health(database_url, "--json")
    assert result.returncode == 1
    state = json.loads(result.stdout)
    assert state["healthy"] is False and len(state["problems"]) == 1
    (processor,) = state["processors"]
    assert processor["id"] == "p1" and processor["beat_fresh"] is True
    assert [w["healthy"] for w in processor["workers"]] == [True, False]
    assert processor["workers"][1]["beat_age_seconds"] >= 10
    assert processor["workers"][1]["pid"] == 5001


def test_a_database_that_refuses_connections_is_unhealthy_with_the_reason():
    result = check_health("postgresql://postgres@127.0.0.1:1/nowhere", "--timeout", "2", timeout=20)
    assert result.returncode == 1
    assert "cannot connect to database 'nowhere' on 127.0.0.1:1" in result.stdout


def test_a_database_without_the_schema_is_unhealthy(empty_database_url):
    status, line = verdict(empty_database_url)
    assert status == 1 and "cannot read the heartbeat tables" in line


@pytest.mark.parametrize(
    "arguments", [("--timeout", "0"), ("--bogus",), ("--all", "--processor-id", "x")]
)
def test_configuration_errors_exit_1_not_78(database_url, arguments):
    result = check_health(database_url, *arguments)
    assert result.returncode == 1
    assert "configuration error" in result.stderr


def test_help_explains_the_exit_status(database_url):
    result = check_health(database_url, "--help")
    assert result.returncode == 0
    assert "exit 0 (healthy) or 1 (unhealthy)" in " ".join(result.stdout.split())


def test_the_reference_name_is_an_installed_alias(database_url, conn):
    add_healthy_processor(conn)
    # Installed next to this interpreter, whatever PATH says.
    alias = Path(sysconfig.get_path("scripts")) / "checktaskprocessorthreadhealth"
    assert alias.is_file(), f"the console script {alias} is not installed"
    result = subprocess.run(
        [alias, "--processor-id", "p1"],
        env=environment(database_url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("healthy: processor p1")


# -- against live processors ------------------------------------------------------------------


def unhealthy_result(database_url: str):
    """The check-health result once it exits 1, or None while it still exits 0."""
    result = check_health(database_url)
    return result if result.returncode == 1 else None


def healthy(database_url: str) -> bool:
    return health_status(database_url) == 0


@pytest.fixture
def live_processor(start_processor):
    processor = start_processor(*PROCESSOR_ARGS)
    processor.wait_ready(2)
    wait_for(lambda: healthy(processor.database_url), message="check-health to exit 0")
    return processor


def test_a_live_processor_is_healthy(database_url, live_processor):
    status, line = verdict(
        database_url, "--processor-id", processor_id(database_url, live_processor.pid)
    )
    assert status == 0 and "2 workers" in line


def test_a_frozen_worker_is_replaced_and_health_returns_to_0(database_url, live_processor):
    pid = live_processor.workers()[0][0]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(
            lambda: live_processor.workers()[0][0] != pid,
            message="the frozen worker to be replaced in its slot",
        )
        wait_for(lambda: healthy(database_url), message="check-health 0 after the replacement")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # killed by the supervisor, as it should be


def test_a_frozen_supervisor_is_unhealthy_then_healthy_again_after_sigcont(
    database_url, live_processor
):
    live_processor.signal(signal.SIGSTOP)
    try:
        # The supervisor writes its workers' rows with its own heartbeat: both go stale
        # together, and the first unhealthy line may name a worker. The supervisor is named
        # once its own grace period has passed too.
        wait_for(
            lambda: "supervisor heartbeat" in check_health(database_url).stdout,
            message="check-health to name the frozen supervisor",
        )
        assert unhealthy_result(database_url) is not None
    finally:
        live_processor.signal(signal.SIGCONT)
    wait_for(lambda: healthy(database_url), message="check-health 0 after SIGCONT")


def test_a_killed_supervisor_is_unhealthy(database_url, live_processor):
    live_processor.signal(signal.SIGKILL)
    live_processor.wait(timeout=10)
    # As for a frozen one: its workers' rows (its writing) may go stale first.
    wait_for(
        lambda: "supervisor heartbeat" in check_health(database_url).stdout,
        message="check-health to name the dead supervisor",
    )
    assert unhealthy_result(database_url) is not None


def test_a_cleanly_stopped_processor_is_unhealthy(database_url, live_processor):
    live_processor.signal(signal.SIGTERM)
    assert live_processor.wait(timeout=20) == 0
    status, line = verdict(database_url)
    assert status == 1 and "stopped at" in line


def test_a_database_that_takes_requests_and_never_answers_is_unhealthy_in_time(database_url):
    from tcp_proxy import TcpProxy

    proxy = TcpProxy()
    proxy.drop_replies()  # connections open, requests reach the server, no answer comes back
    try:
        started = time.monotonic()
        result = check_health(proxy.url(database_url), "--timeout", "2")
        elapsed = time.monotonic() - started
    finally:
        proxy.cut()
    assert result.returncode == 1 and "unhealthy" in result.stdout
    assert elapsed < 15, elapsed  # bounded by --timeout, not by TCP's retransmissions
