"""The reference's interface: the task_processor package, the handler's surface, timeout=None,
transaction_on_commit, the legacy sleep-interval variable, and the visibility of tasks that no
live processor can run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import time, timedelta

import processor_tasks
import pytest
from databases import fetch_all
from harness import REPO, SUPPORT, query, wait_for

from api import queries as api_queries
from common import errors, recurring
from common.config import build_parser, parse_args
from common.lifecycle import NO_TIME_LIMIT_MS
from common.registry import UnknownTaskError
from common.tasks import TaskPriority, TaskRunMethod
from health.cli import main as check_health
from supervisor.unrunnable import UnrunnableWatch

# -- the package ----------------------------------------------------------------------------


def test_the_reference_module_names_are_ours():
    from common import tasks
    from task_processor import decorators, exceptions, models, task_run_method

    assert decorators.register_task_handler is tasks.register_task_handler
    assert models.TaskPriority is TaskPriority
    assert task_run_method.TaskRunMethod is TaskRunMethod
    assert (
        exceptions.InvalidArgumentsError,
        exceptions.TaskBackoffError,
        exceptions.TaskProcessingError,
        exceptions.TaskQueueFullError,
    ) == (
        errors.InvalidArgumentsError,
        tasks.TaskBackoffError,
        errors.TaskProcessingError,
        errors.TaskQueueFullError,
    )
    assert issubclass(errors.InvalidArgumentsError, errors.TaskProcessingError)
    assert issubclass(UnknownTaskError, errors.TaskProcessingError)


def test_recurring_task_takes_the_reference_positional_order():
    from task_processor.decorators import register_recurring_task

    handler = register_recurring_task(
        timedelta(hours=1), "hourly_probe", ("a",), {"b": 1}, time(3, 0), None
    )(lambda a, b: None)
    try:
        (definition,) = [d for d in recurring.definitions() if d.identifier == handler.identifier]
        assert handler.identifier.endswith(".hourly_probe")
        assert (definition.args_json, definition.kwargs_json) == ('["a"]', '{"b":1}')
        assert definition.first_run_time.hour == 3 and handler.timeout is None
    finally:
        recurring.unregister(handler.identifier)


# -- the handler ----------------------------------------------------------------------------


def test_handler_has_the_reference_attributes(define):
    def add(a: int, b: int) -> int:
        return a + b

    handler = define(add, transaction_on_commit=False)
    assert handler.task_identifier == handler.identifier
    assert handler.unwrapped is add
    assert handler(2, 3) == 5 and handler.transaction_on_commit is False


@pytest.mark.parametrize("method", ["SYNCHRONOUSLY", "TASK_PROCESSOR", "SEPARATE_THREAD"])
def test_a_direct_call_refuses_what_delay_refuses(define, run_method, database_url, method):
    from task_processor.exceptions import InvalidArgumentsError

    run_method(method)
    handler = define()
    with pytest.raises(InvalidArgumentsError, match=r"args\[0\] has type set") as direct:
        handler({1, 2})
    with pytest.raises(InvalidArgumentsError) as delayed:
        handler.delay(args=({1, 2},))
    assert type(direct.value) is type(delayed.value)
    with pytest.raises(TypeError):  # still a TypeError, as it was
        handler.run_in_thread(kwargs={"when": object()})


def test_timeout_none_is_stored_as_no_time_limit(define, run_method, conn):
    run_method("TASK_PROCESSOR")
    handler = define(timeout=None)
    task_id = handler.delay()
    assert fetch_all(
        conn, "SELECT timeout_ms FROM task_processor.tasks WHERE id = %s", (task_id,)
    ) == [(NO_TIME_LIMIT_MS,)]
    with pytest.raises(ValueError, match="or None for no time limit"):
        define(timeout=timedelta(0))


def test_raise_if_full_raises_the_reference_error(define, run_method, database_url):
    run_method("TASK_PROCESSOR")
    handler = define(queue_size=1)
    assert handler.delay(raise_if_full=True) is not None
    assert handler.delay() is None  # the reference's behaviour: a warning, no task
    with pytest.raises(errors.TaskQueueFullError, match="queue_size=1"):
        handler.delay(raise_if_full=True)


def test_a_task_without_time_limit_outlives_the_grace_period(
    database_url, start_processor, results, capsys
):
    processor = start_processor("--numthreads", "1", "--graceperiodms", "1000")
    processor.wait_ready(1)
    processor_tasks.sleep_without_limit.delay(args=("long", 3.0))
    wait_for(
        lambda: query(
            database_url,
            "SELECT 1 FROM task_processor.workers WHERE state = "
            "'busy' AND now() - last_beat_at > interval '1.5 s'",
        ),
        message="the task running past the grace period",
    )
    assert check_health(["--all"]) == 0, capsys.readouterr().out
    wait_for(lambda: results("long"), timeout=30, message="the task finished")
    assert fetch_all_runs(database_url) == [("success",)]
    assert "killing worker" not in processor.log_text()


def fetch_all_runs(database_url: str) -> list[tuple]:
    return query(
        database_url,
        "SELECT r.result FROM task_processor.runs AS r JOIN "
        "task_processor.tasks AS t ON t.id = r.task_id WHERE "
        "t.identifier = 'processor_tasks.sleep_without_limit'",
    )


# -- transaction_on_commit ------------------------------------------------------------------

_DJANGO_APP = """
import threading
import django
from django.conf import settings
settings.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                          "NAME": ":memory:"}})
django.setup()
from django.db import transaction
from task_processor.decorators import register_task_handler

ran = threading.Event()

@register_task_handler(transaction_on_commit=%s)
def task():
    ran.set()

with transaction.atomic():
    task.delay()
    print("inside", ran.wait(0.5))
print("after commit", ran.wait(5))
ran.clear()
try:
    with transaction.atomic():
        task.delay()
        raise RuntimeError
except RuntimeError:
    pass
print("after rollback", ran.wait(0.5))
"""


@pytest.mark.parametrize(
    ("on_commit", "expected"),
    [
        (True, ["inside False", "after commit True", "after rollback False"]),
        (False, ["inside True", "after commit True", "after rollback True"]),
    ],
)
def test_transaction_on_commit_waits_for_djangos_commit(on_commit, expected):
    done = subprocess.run(
        [sys.executable, "-c", _DJANGO_APP % on_commit],
        cwd=REPO,
        env={
            **os.environ,
            "TASK_RUN_METHOD": "SEPARATE_THREAD",
            "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.splitlines() == expected, done.stderr


# -- configuration ---------------------------------------------------------------------------


def test_the_legacy_sleep_interval_variable_is_honoured(monkeypatch):
    parser = build_parser("run-task-processor", "", ["sleepintervalms"])
    monkeypatch.setenv("TASK_PROCESSOR_SLEEP_INTERVAL", "750")
    assert parse_args(parser, []).sleepintervalms == 750
    monkeypatch.setenv("TASK_PROCESSOR_SLEEP_INTERVAL_MS", "250")  # the current name wins
    assert parse_args(parser, []).sleepintervalms == 250


# -- tasks nobody live can run --------------------------------------------------------------


def _waiting(conn, identifier: str, count: int, waited_seconds: float) -> None:
    with conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO task_processor.tasks (identifier, scheduled_for) "
            "SELECT %s, now() - make_interval(secs => %s) "
            "FROM generate_series(1, %s)",
            (identifier, waited_seconds, count),
        )


def _live_processor(conn, processor_id: str, identifiers: list[str] | None) -> None:
    with conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO task_processor.processors (id, host, pid, num_workers, "
            "grace_period_ms, task_identifiers) VALUES (%s, 'h', 1, 1, 20000, %s)",
            (processor_id, identifiers),
        )


def test_monitoring_counts_due_tasks_that_no_live_processor_knows(conn):
    _waiting(conn, "app.known", 3, 5)
    _waiting(conn, "app.unknown", 2, 5)
    _live_processor(conn, "p1", ["app.known"])
    with conn.cursor() as cursor:
        assert api_queries.monitoring(cursor)["waiting_unrunnable"] == 2
        _live_processor(conn, "p-older-release", None)  # claims every identifier
        assert api_queries.monitoring(cursor)["waiting_unrunnable"] == 0
        cursor.execute(
            "UPDATE task_processor.processors SET state = 'stopped' WHERE id = 'p-older-release'"
        )
        assert api_queries.monitoring(cursor)["waiting_unrunnable"] == 2


def test_a_processor_warns_about_tasks_it_cannot_run_that_waited_long(conn, caplog, define):
    known = define()
    _waiting(conn, known.identifier, 5, 3600)
    _waiting(conn, "app.from_a_newer_release", 4, 120)
    _waiting(conn, "app.just_enqueued", 4, 1)
    _live_processor(conn, "newer", ["app.from_a_newer_release"])
    with caplog.at_level(logging.WARNING, logger="supervisor.unrunnable"):
        UnrunnableWatch().run(conn)
    (warning,) = caplog.messages
    assert "4 tasks of app.from_a_newer_release have waited up to 12" in warning
    assert "1 live processors know it" in warning
