"""Tasks for the processor tests. Each leaves its trace in the table ``test_results`` of the
database named by DATABASE_URL, so that tests check outcomes in the database."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg2

from common.tasks import TaskBackoffError, register_task_handler

RESULTS_TABLE = """
CREATE TABLE IF NOT EXISTS test_results (
    key text NOT NULL, pid integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def record_key(key: str) -> None:
    """Leave ``key`` and this process's pid in ``test_results``."""
    connection = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO test_results (key, pid) VALUES (%s, %s)", (key, os.getpid())
            )
    finally:
        connection.close()


@register_task_handler()
def record(key: str) -> None:
    record_key(key)


@register_task_handler()
def noop() -> None:
    """Does nothing: for throughput and exactly-once counting via the runs table."""


@register_task_handler(timeout=timedelta(seconds=30))
def sleep_then_record(key: str, seconds: float) -> None:
    record_key(f"{key}:started")
    time.sleep(seconds)
    record_key(key)


@register_task_handler(timeout=timedelta(seconds=1), max_attempts=2)
def hang_in_python() -> None:
    while True:
        pass


@register_task_handler(timeout=timedelta(seconds=1), max_attempts=2)
def hang_in_c() -> None:
    """Blocks inside libpq waiting for the server: no Python code runs until it returns."""
    connection = psycopg2.connect(os.environ["DATABASE_URL"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(600)")


@register_task_handler(max_attempts=3)
def always_fails(key: str) -> None:
    record_key(key)
    raise RuntimeError(f"failure number for {key}")


@register_task_handler(max_attempts=5)
def backs_off_once(key: str) -> None:
    connection = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM test_results WHERE key = %s", (key,))
            seen = cursor.fetchone()[0]
    finally:
        connection.close()
    record_key(key)
    if not seen:
        raise TaskBackoffError()


@register_task_handler(timeout=timedelta(seconds=30))
def segfault() -> None:
    ctypes.string_at(0)


@register_task_handler(max_attempts=1)
def record_once(key: str) -> None:
    """A task with a single attempt: any attempt charged to it wrongly makes it dead."""
    record_key(key)


@register_task_handler(timeout=timedelta(seconds=1), max_attempts=1)
def overrun_slightly(key: str) -> None:
    """Ends just after its deadline: before the supervisor's kill lands."""
    time.sleep(1.15)
    record_key(key)


@register_task_handler(max_attempts=2)
def unstorable_failure() -> None:
    raise ValueError("a message with a NUL \x00 in it")


class _UnreadableTime(datetime):
    """An aware datetime, as date libraries subclass it, whose text form PostgreSQL refuses."""

    def isoformat(self, *args: object, **kwargs: object) -> str:
        return "the day after tomorrow"


@register_task_handler(max_attempts=2)
def backs_off_to_an_unstorable_time() -> None:
    """Its outcome cannot be stored: the database refuses the time it asks to be retried at."""
    raise TaskBackoffError(delay_until=_UnreadableTime(2030, 1, 1, tzinfo=UTC))


@register_task_handler(max_attempts=1)
def backs_off_wrongly() -> None:
    raise TaskBackoffError(delay_until=timedelta(minutes=5))  # not a datetime


@register_task_handler(timeout=None, max_attempts=1)
def sleep_without_limit(key: str, seconds: float) -> None:
    """No time limit: the supervisor must let it run past the grace period."""
    record_key(f"{key}:started")
    time.sleep(seconds)
    record_key(key)


EXECUTIONS_TABLE = """
CREATE TABLE IF NOT EXISTS test_executions (
    key text NOT NULL, host text NOT NULL, pid integer NOT NULL,
    started_at timestamptz NOT NULL, ended_at timestamptz NOT NULL
)
"""


@register_task_handler()
def execution(key: str, seconds: float) -> None:
    """Records where and when it ran, from its start to its end: overlapping executions of
    one task would show."""
    connection = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            started = cursor.fetchone()[0]
        time.sleep(seconds)
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO test_executions VALUES (%s, %s, %s, %s, clock_timestamp())",
                (key, socket.gethostname(), os.getpid(), started),
            )
    finally:
        connection.close()


@register_task_handler(timeout=timedelta(seconds=120), max_attempts=5)
def beats_while_running(key: str, seconds: float) -> None:
    """Records a row with its pid every 0.2 s while it runs: two attempts that ran at the same
    time show as overlapping spans of rows of two pids."""
    connection = psycopg2.connect(os.environ["DATABASE_URL"])
    connection.autocommit = True
    try:
        end = time.monotonic() + seconds
        with connection.cursor() as cursor:
            while time.monotonic() < end:
                cursor.execute(
                    "INSERT INTO test_results (key, pid) VALUES (%s, %s)", (key, os.getpid())
                )
                time.sleep(0.2)
    finally:
        connection.close()
    record_key(f"{key}:done")


@register_task_handler(timeout=timedelta(seconds=2), max_attempts=2)
def sleeps_in_libc() -> None:
    """Blocks in C for 30 s; the supervisor's SIGUSR1 stack dump makes sleep() return early."""
    ctypes.CDLL(None).sleep(30)


@register_task_handler()
def forks_and_returns(key: str) -> None:
    """The child returns from the task function, as the parent does."""
    if os.fork() == 0:
        time.sleep(0.5)
        return
    record_key(key)


@register_task_handler()
def leaves_a_child(key: str) -> None:
    """Starts a process that outlives the task (it would sleep for ten minutes)."""
    if os.fork() == 0:
        try:
            record_key(key)
            time.sleep(600)
        finally:
            os._exit(0)


@register_task_handler(timeout=timedelta(seconds=60), max_attempts=2)
def grows(step_mb: int, seconds: float) -> None:
    """Grows by ``step_mb`` every 0.1 s for ``seconds`` (touching every page), then frees it."""
    held = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        held.append(bytearray(b"\x01") * (step_mb * 1024 * 1024))
        time.sleep(0.1)


@register_task_handler(max_attempts=1)
def fails_with_a_lone_surrogate() -> None:
    raise ValueError("bytes decoded with surrogateescape: \udcff\udcfe")


@register_task_handler()
def records_the_queue_url_its_programs_see(key: str) -> None:
    """Starts a program that prints the queue's URL as it finds it in its environment."""
    seen = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('TASK_PROCESSOR_DATABASE_URL'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    record_key(f"{key}={seen}")


@register_task_handler()
def records_what_it_got(key: str, *args, **kwargs) -> None:
    """Records the repr of its arguments (types, signs and key order show in a repr)."""
    record_key(f"{key}={args!r} {kwargs!r}")


@register_task_handler()
def records_whether_opentelemetry_is_loaded(key: str) -> None:
    record_key(f"{key}:{'opentelemetry' in sys.modules}")
