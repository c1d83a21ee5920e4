"""Hostile conditions, with real processes: a paused supervisor, a timeout cut short by a signal,
rows a worker cannot decode, tasks that crash, fork or grow. No attempt outlives its lease, no
timeout is escaped, and a poison task hurts only itself."""

from __future__ import annotations

import os
import signal
from itertools import pairwise

import processor_tasks
import psutil
import pytest
from harness import query, wait_for


def _task(url: str, task_id: int) -> tuple:
    return query(
        url,
        "SELECT state, attempts, last_error FROM task_processor.tasks WHERE id = %s",
        (task_id,),
    )[0]


def _results(url: str, task_id: int) -> list[str]:
    return [
        result
        for (result,) in query(
            url, "SELECT result FROM task_processor.runs WHERE task_id = %s ORDER BY id", (task_id,)
        )
    ]


def _final(url: str, task_id: int, timeout: float = 30.0) -> str:
    wait_for(
        lambda: _task(url, task_id)[0] in ("succeeded", "dead"),
        timeout=timeout,
        message=f"task {task_id} in a final state",
    )
    return _task(url, task_id)[0]


def _spans(url: str, key: str) -> dict[int, tuple]:
    """pid -> (first, last) time at which that process recorded ``key``."""
    rows = query(
        url,
        "SELECT pid, min(at), max(at) FROM test_results WHERE key = %s "
        "GROUP BY pid ORDER BY min(at)",
        (key,),
    )
    return {pid: (first, last) for pid, first, last in rows}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_a_paused_supervisor_never_lets_a_task_run_twice_at_once(
    database_url, start_processor, results
):
    first = start_processor("--numthreads", "1", "--lease-seconds", "5")
    first.wait_ready(1)
    task_id = processor_tasks.beats_while_running.delay(args=("span", 25))
    wait_for(lambda: results("span"), message="the task running on the first processor")
    second = start_processor("--numthreads", "1", "--lease-seconds", "5")
    second.wait_ready(1)
    first.signal(signal.SIGSTOP)
    try:
        # The lease expires about 5 s after the last renewal; the second processor requeues
        # it within 10 s more and runs it.
        wait_for(
            lambda: len(_spans(database_url, "span")) >= 2,
            timeout=30,
            message="the second processor running the task",
        )
    finally:
        first.signal(signal.SIGCONT)
    assert _final(database_url, task_id, timeout=60) == "succeeded"
    spans = sorted(_spans(database_url, "span").values())
    for (_, earlier_end), (later_start, _) in pairwise(spans):
        assert earlier_end < later_start, f"two attempts ran at once: {spans}"
    assert "killed by its lease fence" in first.log_text()
    assert first.process.poll() is None


def test_an_attempt_that_ends_past_its_deadline_is_a_timeout(database_url, start_processor):
    processor = start_processor("--numthreads", "1")
    processor.wait_ready(1)
    task_id = processor_tasks.sleeps_in_libc.delay()  # sleep(30) with a timeout of 2 s
    assert _final(database_url, task_id) == "dead"
    assert _results(database_url, task_id) == ["timeout", "timeout"]
    assert "timeout of 2" in _task(database_url, task_id)[2]


def test_rows_a_worker_cannot_decode_fail_alone(database_url, start_processor, results):
    processor = start_processor("--numthreads", "2")
    workers = processor.wait_ready(2)
    deep = "[" * 3000 + "]" * 3000
    poison = {
        "deep args": (deep, "{}"),
        "deep kwargs": ("[]", '{"a": ' + deep + "}"),
        "an object for args": ('{"key": "x"}', "{}"),
        "a string for args": ('"xy"', "{}"),
        "a list for kwargs": ('["x"]', '["y"]'),
        "kwargs that do not fit": ("[]", '{"nope": 1}'),
    }
    ids = {}
    for name, (args, kwargs) in poison.items():
        ids[name] = query(
            database_url,
            """
            INSERT INTO task_processor.tasks (identifier, args, kwargs, max_attempts)
            VALUES ('processor_tasks.record', %s::jsonb, %s::jsonb, 2) RETURNING id""",
            (args, kwargs),
        )[0][0]
    fine = processor_tasks.record.delay(args=("fine",))
    for name, task_id in ids.items():
        assert _final(database_url, task_id) == "dead", name
        assert _results(database_url, task_id) == ["failure", "failure"], name
    errors = {name: _task(database_url, task_id)[2] for name, task_id in ids.items()}
    assert "nested too deeply" in errors["deep args"]
    assert "nested too deeply" in errors["deep kwargs"]
    assert "args must be a JSON array, got dict" in errors["an object for args"]
    assert "args must be a JSON array, got str" in errors["a string for args"]
    assert "kwargs must be a JSON object, got list" in errors["a list for kwargs"]
    assert "unexpected keyword argument 'nope'" in errors["kwargs that do not fit"]
    assert _final(database_url, fine) == "succeeded"
    assert processor.worker_pids() == workers  # no worker died
    assert processor.process.poll() is None


def test_a_task_that_kills_its_worker_goes_dead_and_is_no_crash_loop(
    database_url, start_processor, results
):
    processor = start_processor("--numthreads", "1", "--queuepopsize", "5")
    processor.wait_ready(1)
    crashing = [processor_tasks.segfault.delay() for _ in range(3)]
    fine = processor_tasks.record.delay_many([{"args": (f"k{i}",)} for i in range(5)])
    for task_id in crashing:
        assert _final(database_url, task_id, timeout=60) == "dead"
        _, attempts, error = _task(database_url, task_id)
        assert attempts == 3 and "SIGSEGV" in error
        assert _results(database_url, task_id) == ["worker_lost"] * 3
    assert all(_final(database_url, task_id) == "succeeded" for task_id in fine)
    assert "crash loop" not in processor.log_text()
    assert processor.process.poll() is None


def test_a_forked_child_of_a_task_never_runs_worker_code(database_url, start_processor, results):
    processor = start_processor("--numthreads", "1")
    (worker,) = processor.wait_ready(1)
    task_id = processor_tasks.forks_and_returns.delay(args=("parent",))
    assert _final(database_url, task_id) == "succeeded"
    # The child returned from the task 0.5 s later: it exited, and the worker reaped it.
    wait_for(
        lambda: not psutil.Process(worker).children(),
        timeout=10,
        message="the forked child gone, not a zombie",
    )
    later = processor_tasks.record.delay_many([{"args": (f"later{i}",)} for i in range(5)])
    assert all(_final(database_url, task_id) == "succeeded" for task_id in later)
    assert {pid for i in range(5) for _, pid in results(f"later{i}")} == {worker}
    assert _results(database_url, task_id) == ["success"]


def test_processes_left_by_tasks_die_with_their_worker(database_url, start_processor, results):
    processor = start_processor("--numthreads", "1")
    (worker,) = processor.wait_ready(1)
    processor_tasks.leaves_a_child.delay(args=("child1",))
    ((_, child1),) = wait_for(lambda: results("child1"), message="the first child started")
    os.kill(worker, signal.SIGKILL)  # the worker is replaced: its child dies with it
    wait_for(lambda: not _alive(child1), timeout=10, message="the first child killed")
    (replacement,) = processor.wait_ready(1)
    processor_tasks.leaves_a_child.delay(args=("child2",))
    ((_, child2),) = wait_for(lambda: results("child2"), message="the second child started")
    processor.signal(signal.SIGTERM)  # a clean stop: the child dies too
    assert processor.wait() == 0
    wait_for(lambda: not _alive(child2), timeout=10, message="the second child killed")
    assert replacement != worker


def test_a_task_growing_past_the_memory_limit_is_stopped_while_it_runs(
    database_url, start_processor
):
    processor = start_processor("--numthreads", "1", "--max-worker-memory-mb", "150")
    processor.wait_ready(1)
    task_id = processor_tasks.grows.delay(args=(10, 5))  # 10 MiB every 0.1 s: 500 MiB
    assert _final(database_url, task_id) == "dead"
    assert _results(database_url, task_id) == ["failure", "failure"]
    assert "grew past the worker memory limit" in _task(database_url, task_id)[2]
    assert "crash loop" not in processor.log_text()
    assert processor.process.poll() is None


def test_an_error_text_with_lone_surrogates_is_recorded_escaped(database_url, start_processor):
    processor = start_processor("--numthreads", "1")
    processor.wait_ready(1)
    task_id = processor_tasks.fails_with_a_lone_surrogate.delay()
    assert _final(database_url, task_id) == "dead"
    error = _task(database_url, task_id)[2]
    assert "Traceback" in error and "surrogateescape: \\udcff\\udcfe" in error
