"""Paths of a processor that nothing else exercises: a periodic duty that raises, the JSON
log format, and the queue's URL in the environment of the programs that tasks start."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket

import processor_tasks
import psycopg2
from harness import query, wait_for

from common.settings import ProcessorSettings
from supervisor.database import DUTY_PAUSE, SupervisorDatabase


class FailingDuty:
    """A periodic duty with a bug: it raises on every run."""

    def __init__(self) -> None:
        self.runs = 0

    def start(self, connection) -> None:
        pass

    def next_due(self) -> float:
        return 0.0  # always due

    def run(self, connection) -> None:
        self.runs += 1
        raise KeyError("a bug in a periodic duty")


def test_a_duty_that_raises_is_logged_and_paused_and_the_heartbeat_goes_on(database_url, caplog):
    duty = FailingDuty()
    database = SupervisorDatabase(
        ProcessorSettings(database_url, "duty-test"), socket.gethostname(), os.getpid()
    )
    assert database.start(1, lambda timeout: False, [duty])
    try:
        with caplog.at_level(logging.ERROR, logger="supervisor.database"):
            database.tend(1, [])
        assert duty.runs == 1
        assert "periodic duty FailingDuty failed; retrying in 30 s" in caplog.text
        assert "KeyError: 'a bug in a periodic duty'" in caplog.text
        ((first_beat,),) = query(
            database_url,
            "SELECT last_beat_at FROM task_processor.processors WHERE id = 'duty-test'",
        )
        database.next_beat = 0.0  # beat again now
        database.tend(1, [])
        assert duty.runs == 1, f"retried before its pause of {DUTY_PAUSE:.0f} s was over"
        ((second_beat,),) = query(
            database_url,
            "SELECT last_beat_at FROM task_processor.processors WHERE id = 'duty-test'",
        )
        assert second_beat > first_beat  # the database work goes on without the duty
        assert isinstance(database.connection, psycopg2.extensions.connection)
    finally:
        database.stop()


def test_the_json_log_format_is_one_object_per_line_from_every_process(
    database_url, start_processor, results
):
    processor = start_processor("--numthreads", "1", "--log-format", "json")
    processor.wait_ready(1)
    processor_tasks.always_fails.delay(args=("json",))  # a worker logs its failure
    wait_for(lambda: "attempt 1/3" in processor.log_text(), message="the failure to be logged")
    entries = [json.loads(line) for line in processor.log_text().splitlines() if line.strip()]
    assert all(set(entry) >= {"time", "level", "logger", "pid", "message"} for entry in entries)
    supervisor = [e for e in entries if e["pid"] == processor.pid]
    workers = [e for e in entries if e["pid"] != processor.pid]
    assert any("starting 1 workers" in e["message"] for e in supervisor)
    failure = next(e for e in workers if "attempt 1/3" in e["message"])
    assert failure["level"] == "WARNING" and failure["logger"] == "worker.runner"
    assert "RuntimeError: failure number for json" in failure["message"]
    assert results("json")


def test_programs_that_tasks_start_find_the_queue_as_reloaded(
    database_url, start_processor, results, tmp_path
):
    # The processor has the queue's URL from its config file; a program a task starts finds
    # it as TASK_PROCESSOR_DATABASE_URL, and after a reload that changed it, the new one (the
    # supervisor's own environment, from which a reload reads the options, kept no copy).
    config = tmp_path / "processor.conf"
    before, after = f"{database_url}?connect_timeout=7", f"{database_url}?connect_timeout=9"
    config.write_text(f"numthreads = 1\ntask-processor-database-url = {before}\n")
    processor = start_processor("--config", str(config))
    (first,) = processor.wait_ready(1)
    processor_tasks.records_the_queue_url_its_programs_see.delay(args=("before",))
    wait_for(lambda: results(f"before={before}"), message="the URL before the reload")

    config.write_text(f"numthreads = 1\ntask-processor-database-url = {after}\n")
    processor.signal(signal.SIGHUP)
    wait_for(
        lambda: (pids := processor.worker_pids()) and first not in pids,
        message="the worker replaced after the reload",
    )
    processor_tasks.records_the_queue_url_its_programs_see.delay(args=("after",))
    wait_for(lambda: results(f"after={after}"), message="the URL after the reload")


def test_sigusr1_dumps_the_stack_of_the_supervisor_and_of_a_worker_killed_as_stuck(
    database_url, start_processor
):
    processor = start_processor("--numthreads", "1")
    processor.wait_ready(1)
    processor.signal(signal.SIGUSR1)
    wait_for(
        lambda: 'supervisor/arbiter.py", line' in processor.log_text(),
        message="the supervisor's stack in the log",
    )
    assert processor.process.poll() is None  # a dump, not the signal's default (exit)
    # A task past its timeout: the supervisor sends the worker SIGUSR1, then SIGKILL.
    processor_tasks.hang_in_python.delay()
    wait_for(
        lambda: 'processor_tasks.py", line' in processor.log_text(),
        timeout=30,
        message="the stuck worker's stack in the log",
    )
    assert "in hang_in_python" in processor.log_text()
