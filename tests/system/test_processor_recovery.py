"""Real processors, real kills: nothing is lost, nothing stays stuck."""

from __future__ import annotations

import itertools
import os
import signal
import time
from datetime import UTC, datetime, timedelta

import processor_tasks
import psutil
import psycopg2
from harness import query, reap_orphans, task_states, wait_for


def _task(url: str, task_id: int) -> tuple:
    return query(
        url,
        "SELECT state, attempts, last_error FROM task_processor.tasks WHERE id = %s",
        (task_id,),
    )[0]


def _runs(url: str, task_id: int) -> list[tuple]:
    return query(
        url,
        "SELECT attempt, result, error FROM task_processor.runs WHERE task_id = %s ORDER BY id",
        (task_id,),
    )


def _busy_worker_pid(processor, task_id: int) -> int:
    def busy():
        for pid, state, current in processor.workers().values():
            if state == "busy" and current == task_id:
                return pid
        return None

    return wait_for(busy, message=f"a worker busy with task {task_id}")


def test_tasks_run_and_are_recorded(database_url, start_processor, results):
    processor = start_processor("--numthreads", "2")
    processor.wait_ready(2)
    ids = processor_tasks.record.delay_many([{"args": (f"k{i}",)} for i in range(20)])
    wait_for(lambda: task_states(database_url).get("succeeded") == 20)
    assert len(query(database_url, "SELECT * FROM test_results")) == 20
    runs = query(
        database_url,
        "SELECT task_id, attempt, result FROM task_processor.runs WHERE task_id = ANY(%s)",
        (ids,),
    )
    assert sorted(runs) == sorted((task_id, 1, "success") for task_id in ids)


def test_kill_9_busy_worker_runs_its_task_again(database_url, start_processor, results):
    processor = start_processor("--numthreads", "2")
    processor.wait_ready(2)
    task_id = processor_tasks.sleep_then_record.delay(args=("slow", 2))
    wait_for(lambda: results("slow:started"), message="task started")
    pid = _busy_worker_pid(processor, task_id)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _task(database_url, task_id)[0] == "succeeded", timeout=30)
    _state, attempts, _ = _task(database_url, task_id)
    assert attempts == 2
    outcomes = [(attempt, result) for attempt, result, _ in _runs(database_url, task_id)]
    assert outcomes == [(1, "worker_lost"), (2, "success")]
    assert "SIGKILL" in _runs(database_url, task_id)[0][2]
    assert len(results("slow")) == 1


def test_kill_9_idle_worker_is_replaced_and_nothing_is_lost(database_url, start_processor, results):
    processor = start_processor("--numthreads", "2")
    before = processor.wait_ready(2)
    os.kill(before[0], signal.SIGKILL)
    after = wait_for(
        lambda: (
            (pids := processor.worker_pids()) and len(pids) == 2 and before[0] not in pids and pids
        ),
        message="a replacement worker",
    )
    assert before[1] in after
    processor_tasks.record.delay_many([{"args": (f"after{i}",)} for i in range(10)])
    wait_for(lambda: task_states(database_url).get("succeeded") == 10)


def test_sigstopped_worker_is_killed_and_replaced_within_grace_period(
    database_url, start_processor
):
    grace = 1.5
    processor = start_processor("--numthreads", "2", "--graceperiodms", str(int(grace * 1000)))
    before = processor.wait_ready(2)
    stopped_at = time.monotonic()
    os.kill(before[0], signal.SIGSTOP)
    wait_for(
        lambda: before[0] not in processor.worker_pids() and len(processor.worker_pids()) == 2,
        timeout=10,
        message="replacement",
    )
    replaced_after = time.monotonic() - stopped_at
    # The bound is behaviour, not speed: the grace period, the kill sequence and a tick.
    assert replaced_after < grace + 3.0, replaced_after
    log = processor.log_text()
    assert "stopped (SIGSTOP)" in log or "silent for" in log


def _check_hang(database_url, start_processor, handler):
    processor = start_processor("--numthreads", "2", "--graceperiodms", "5000")
    processor.wait_ready(2)
    task_id = handler.delay()
    wait_for(
        lambda: _task(database_url, task_id)[0] == "dead",
        timeout=30,
        message="the hanging task to be dead",
    )
    runs = _runs(database_url, task_id)
    assert [(attempt, result) for attempt, result, _ in runs] == [(1, "timeout"), (2, "timeout")]
    assert "exceeded its timeout of 1.0 s" in runs[0][2]
    _state, attempts, last_error = _task(database_url, task_id)
    assert attempts == 2 and "timeout" in last_error
    wait_for(lambda: len(processor.worker_pids()) == 2, message="workers replaced")
    assert "Current thread" in processor.log_text() or "Thread 0x" in processor.log_text()


def test_task_hanging_in_python_is_killed_at_its_deadline(database_url, start_processor):
    _check_hang(database_url, start_processor, processor_tasks.hang_in_python)


def test_task_hanging_in_c_is_killed_at_its_deadline(database_url, start_processor):
    _check_hang(database_url, start_processor, processor_tasks.hang_in_c)


def test_kill_9_supervisor_leaves_no_worker_and_a_new_processor_finishes(
    database_url, start_processor, results
):
    first = start_processor("--numthreads", "2")
    workers = first.wait_ready(2)
    ids = processor_tasks.sleep_then_record.delay_many([{"args": (f"s{i}", 1.5)} for i in range(4)])
    wait_for(lambda: task_states(database_url).get("running"), message="tasks running")
    first.signal(signal.SIGKILL)
    first.process.wait(10)

    def workers_gone():
        reap_orphans()
        return not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in workers
        )

    wait_for(workers_gone, timeout=5, message="orphaned workers to die")

    second = start_processor("--numthreads", "2")
    second.wait_ready(2)
    wait_for(
        lambda: task_states(database_url).get("succeeded") == len(ids),
        timeout=40,
        message="every task done by the new processor",
    )
    for index in range(4):
        assert len(results(f"s{index}")) >= 1


def test_terminated_connections_resume(database_url, start_processor, results):
    processor = start_processor("--numthreads", "2")
    processor.wait_ready(2)
    killed = query(
        database_url,
        """
        SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name LIKE 'task-processor %%'""",
    )
    assert killed[0][0] >= 3  # two workers and the supervisor
    processor_tasks.record.delay_many([{"args": (f"r{i}",)} for i in range(10)])
    wait_for(lambda: task_states(database_url).get("succeeded") == 10, timeout=20)
    assert processor.process.poll() is None


def test_failing_task_is_retried_with_backoff_then_dead(database_url, start_processor, results):
    processor = start_processor("--numthreads", "1", "--sleepintervalms", "100")
    processor.wait_ready(1)
    task_id = processor_tasks.always_fails.delay(args=("f",))
    wait_for(lambda: _task(database_url, task_id)[0] == "dead", timeout=30)
    runs = _runs(database_url, task_id)
    assert [result for _, result, _ in runs] == ["failure"] * 3
    assert "RuntimeError: failure number for f" in _task(database_url, task_id)[2]
    times = query(database_url, "SELECT at FROM test_results WHERE key = 'f' ORDER BY at")
    gaps = [(b[0] - a[0]).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.4 for gap in gaps), gaps  # retries wait for a backoff


def test_backoff_error_reschedules(database_url, start_processor, results):
    processor = start_processor("--numthreads", "1", "--sleepintervalms", "100")
    processor.wait_ready(1)
    task_id = processor_tasks.backs_off_once.delay(args=("b",))
    wait_for(lambda: _task(database_url, task_id)[0] == "succeeded", timeout=20)
    assert [result for _, result, _ in _runs(database_url, task_id)] == ["backoff", "success"]


def test_unknown_identifier_waits_and_holds_up_nothing(
    database_url, start_processor, results, conn
):
    processor = start_processor("--numthreads", "1")
    processor.wait_ready(1)
    with conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO task_processor.tasks (identifier, max_attempts) "
            "VALUES ('nowhere.missing', 1) RETURNING id"
        )
        unknown_id = cursor.fetchone()[0]
    processor_tasks.record.delay(args=("fine",))
    wait_for(lambda: results("fine"))
    assert _task(database_url, unknown_id)[:2] == ("waiting", 0)
    assert _runs(database_url, unknown_id) == []


def test_worker_crash_in_c_requeues_its_task(database_url, start_processor):
    processor = start_processor("--numthreads", "1")
    processor.wait_ready(1)
    task_id = processor_tasks.segfault.delay()
    wait_for(lambda: _task(database_url, task_id)[0] == "dead", timeout=30)
    runs = _runs(database_url, task_id)
    assert [result for _, result, _ in runs] == ["worker_lost"] * 3
    assert "SIGSEGV" in runs[0][2]
    assert processor.process.poll() is None


def test_two_processors_run_every_task_exactly_once(database_url, start_processor):
    for _ in range(2):
        start_processor("--numthreads", "2").wait_ready(2)
    ids = processor_tasks.noop.delay_many([{} for _ in range(2000)])
    wait_for(lambda: task_states(database_url).get("succeeded") == len(ids), timeout=60)
    runs = query(
        database_url,
        "SELECT task_id, count(*) FROM task_processor.runs GROUP BY task_id HAVING count(*) <> 1",
    )
    assert runs == []
    owners = query(
        database_url, "SELECT count(DISTINCT split_part(worker, '/', 1)) FROM task_processor.runs"
    )
    assert owners[0][0] == 2  # both processors took part


def test_worker_recycles_after_max_tasks(database_url, start_processor):
    processor = start_processor("--numthreads", "1", "--max-tasks-per-worker", "5")
    first = processor.wait_ready(1)
    processor_tasks.noop.delay_many([{} for _ in range(12)])
    wait_for(lambda: task_states(database_url).get("succeeded") == 12)
    workers = query(database_url, "SELECT count(DISTINCT worker) FROM task_processor.runs")
    assert workers[0][0] >= 3
    assert first[0] not in processor.worker_pids()


def test_slow_task_gives_back_the_rest_of_its_batch(database_url, start_processor, results):
    processor = start_processor("--numthreads", "2", "--queuepopsize", "10")
    processor.wait_ready(2)
    # One statement, one notification: the first worker to wake claims all four.
    processor_tasks.sleep_then_record.delay_many([{"args": (f"slow{i}", 0.3)} for i in range(4)])
    wait_for(lambda: all(results(f"slow{i}") for i in range(4)), timeout=20)
    pids = {pid for i in range(4) for _, pid in results(f"slow{i}:started")}
    assert len(pids) == 2  # after the first slow task the rest went back and were shared


def test_a_kill_for_a_timeout_never_lands_on_the_next_task(
    database_url, start_processor, results, conn
):
    processor = start_processor("--numthreads", "1")
    (worker,) = processor.wait_ready(1)
    connection = psycopg2.connect(database_url)  # one commit: both in one claimed batch
    with connection:
        overrun = processor_tasks.overrun_slightly.delay(args=("overrun",), connection=connection)
        victim = processor_tasks.record_once.delay(args=("victim",), connection=connection)
    connection.close()
    wait_for(lambda: _task(database_url, victim)[0] in ("succeeded", "dead"), timeout=20)
    assert _task(database_url, victim)[0] == "succeeded"
    assert [result for _, result, _ in _runs(database_url, victim)] == ["success"]
    assert len(results("victim")) == 1
    wait_for(lambda: "beat again before it was killed" in processor.log_text())
    # It ended past its deadline: a timeout, whatever its code returned.
    assert _task(database_url, overrun)[0] == "dead"
    assert [result for _, result, _ in _runs(database_url, overrun)] == ["timeout"]
    assert processor.worker_pids() == [worker]


def test_an_outcome_the_database_cannot_store_fails_that_task_alone(database_url, start_processor):
    processor = start_processor("--numthreads", "1")
    processor.wait_ready(1)
    connection = psycopg2.connect(database_url)  # one commit: one claimed batch
    with connection:
        nul = processor_tasks.unstorable_failure.delay(connection=connection)
        backoff = processor_tasks.backs_off_wrongly.delay(connection=connection)
        unstorable = processor_tasks.backs_off_to_an_unstorable_time.delay(connection=connection)
        fine = processor_tasks.noop.delay(connection=connection)
    connection.close()
    wait_for(
        lambda: all(
            _task(database_url, task)[0] in ("dead", "succeeded")
            for task in (nul, backoff, unstorable, fine)
        ),
        timeout=30,
    )
    assert _task(database_url, fine)[0] == "succeeded"
    assert "a message with a NUL \\x00 in it" in _task(database_url, nul)[2]
    assert "delay_until must be a timezone-aware datetime" in _task(database_url, backoff)[2]
    assert [result for _, result, _ in _runs(database_url, nul)] == ["failure", "failure"]
    # The database refused this outcome: the worker's fallback recorded why instead.
    state, attempts, error = _task(database_url, unstorable)
    assert (state, attempts) == ("dead", 2)
    assert "the outcome of this attempt could not be recorded" in error
    assert "the day after tomorrow" in error and error.endswith("it was: backoff")
    assert "recording them one by one" in processor.log_text()
    assert processor.process.poll() is None


def test_a_worker_killed_by_an_unnamed_signal_is_replaced(database_url, start_processor):
    processor = start_processor("--numthreads", "1")
    (worker,) = processor.wait_ready(1)
    os.kill(worker, signal.SIGRTMIN + 6)
    wait_for(lambda: "died: signal" in processor.log_text(), message="the death logged")
    wait_for(
        lambda: processor.worker_pids() and worker not in processor.worker_pids(),
        message="a replacement worker",
    )
    assert processor.process.poll() is None


def test_a_delayed_task_starts_when_due_not_at_the_next_poll(
    database_url, start_processor, results
):
    processor = start_processor(
        "--numthreads", "1", "--sleepintervalms", "30000", "--graceperiodms", "90000"
    )
    processor.wait_ready(1)
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    task_id = processor_tasks.record.delay(args=("on time",), delay_until=due)
    wait_for(lambda: results("on time"), timeout=20, message="the delayed task to run")
    (started_at,) = wait_for(
        lambda: query(
            database_url,
            "SELECT started_at FROM task_processor.runs WHERE task_id = %s",
            (task_id,),
        ),
        message="its attempt recorded",
    )[0]
    assert due <= started_at < due + timedelta(seconds=5)  # the fallback poll is 30 s away


def test_a_busy_worker_stopped_with_sigstop_is_replaced_within_the_grace_period(
    database_url, start_processor, results
):
    processor = start_processor("--numthreads", "1", "--graceperiodms", "1500")
    (worker,) = processor.wait_ready(1)
    task_id = processor_tasks.sleep_then_record.delay(args=("paused", 10))  # timeout 30 s
    wait_for(lambda: results("paused:started"))
    os.kill(worker, signal.SIGSTOP)
    wait_for(
        lambda: processor.worker_pids() and worker not in processor.worker_pids(),
        timeout=10,
        message="the stopped busy worker to be replaced",
    )
    wait_for(lambda: _runs(database_url, task_id), message="the lost attempt to be recorded")
    assert "stopped (SIGSTOP)" in _runs(database_url, task_id)[0][2]
