"""Operating a processor: signals, systemd notifications, configuration errors, crash loops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import processor_tasks
import pytest
from harness import REPO, SUPPORT, query, task_states, wait_for


def test_sigterm_lets_running_tasks_finish_and_exits_0(database_url, start_processor, results):
    processor = start_processor("--numthreads", "2")
    processor.wait_ready(2)
    processor_tasks.sleep_then_record.delay_many([{"args": (f"d{i}", 1.5)} for i in range(2)])
    wait_for(lambda: len(results("d0:started")) + len(results("d1:started")) == 2)
    processor.signal(signal.SIGTERM)
    assert processor.wait(20) == 0
    assert task_states(database_url) == {"succeeded": 2}
    rows = query(
        database_url, "SELECT state, stopped_at IS NOT NULL FROM task_processor.processors"
    )
    assert rows == [("stopped", True)]


def test_drain_deadline_kills_and_requeues(database_url, start_processor, results):
    processor = start_processor("--numthreads", "1", "--drain-timeout", "1")
    processor.wait_ready(1)
    task_id = processor_tasks.sleep_then_record.delay(args=("long", 20))
    wait_for(lambda: results("long:started"))
    processor.signal(signal.SIGTERM)
    assert processor.wait(15) == 0
    state, error = query(
        database_url, "SELECT state, last_error FROM task_processor.tasks WHERE id = %s", (task_id,)
    )[0]
    assert state == "waiting" and "drain deadline" in error


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGQUIT,)],
    ids=["second SIGTERM", "SIGQUIT"],
)
def test_stopping_at_once_requeues_running_tasks(database_url, start_processor, results, signals):
    processor = start_processor("--numthreads", "1", "--drain-timeout", "60")
    processor.wait_ready(1)
    processor_tasks.sleep_then_record.delay(args=("long", 20))
    wait_for(lambda: results("long:started"))
    for handled, signum in enumerate(signals, 1):
        processor.signal(signum)  # the next only once the supervisor has acted on this one
        wait_for(
            lambda handled=handled: processor.log_text().count("got SIG") >= handled,
            message=f"signal {handled} to be handled",
        )
    assert processor.wait(5) == 0
    assert task_states(database_url) == {"waiting": 1}


def test_ttin_and_ttou_change_the_worker_count(database_url, start_processor):
    processor = start_processor("--numthreads", "2")
    processor.wait_ready(2)
    processor.signal(signal.SIGTTIN)
    wait_for(lambda: len(processor.worker_pids()) == 3 and len(processor.workers()) == 3)
    for remaining in (2, 1):  # one at a time: the kernel merges a signal sent while pending
        processor.signal(signal.SIGTTOU)
        wait_for(
            lambda remaining=remaining: (
                len(processor.worker_pids()) == remaining and len(processor.workers()) == remaining
            ),
            message=f"{remaining} workers",
        )
    wait_for(
        lambda: query(database_url, "SELECT num_workers FROM task_processor.processors") == [(1,)],
        message="num_workers recorded",
    )


def test_sighup_reloads_the_config_file_and_replaces_workers(
    database_url, start_processor, tmp_path
):
    config = tmp_path / "processor.conf"
    config.write_text("numthreads = 1\n")
    processor = start_processor("--config", str(config))
    first = processor.wait_ready(1)
    config.write_text("numthreads = 2\nsleepintervalms = 500\n")
    processor.signal(signal.SIGHUP)
    wait_for(
        lambda: len(processor.worker_pids()) == 2 and first[0] not in processor.worker_pids(),
        message="workers replaced after reload",
    )
    assert processor.process.poll() is None


def test_log_lines_name_their_process_and_a_reload_sets_the_level_of_all(
    database_url, start_processor, tmp_path
):
    """Workers keep the logging they inherit (common/logs.py): each line still names the
    worker that wrote it, and a level reloaded by the supervisor reaches the workers it forks
    afterwards as well as the supervisor itself."""
    config = tmp_path / "processor.conf"
    config.write_text("numthreads = 1\nlog-level = WARNING\n")
    processor = start_processor("--config", str(config))
    (first,) = processor.wait_ready(1)
    config.write_text("numthreads = 1\nlog-level = DEBUG\n")
    processor.signal(signal.SIGHUP)
    (second,) = wait_for(
        lambda: (pids := processor.worker_pids()) and first not in pids and pids,
        message="the worker replaced after reload",
    )
    wait_for(lambda: len(processor.workers()) == 1 and processor.workers()[0][0] == second)
    processor.signal(signal.SIGTERM)
    assert processor.wait(20) == 0

    log = processor.log_text()
    assert f"DEBUG [supervisor {processor.pid}] supervisor.arbiter: worker 0 started" in log
    assert f"DEBUG [worker 0 {second}] worker.process: worker " in log
    assert f"[worker 0 {first}]" not in log  # it logged at WARNING: nothing to say


def test_systemd_notifications_on_a_real_socket(database_url, start_processor, tmp_path):
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(0.5)
    processor = start_processor(
        "--numthreads", "2", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    )
    messages: list[str] = []

    def receive_until(predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                continue
            if predicate():
                return
        raise AssertionError(f"notifications so far: {messages}")

    receive_until(lambda: any("READY=1" in m for m in messages))
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=" in ready and f"MAINPID={processor.pid}" in ready
    first_watchdog = len(messages)
    receive_until(lambda: sum("WATCHDOG=1" in m for m in messages[first_watchdog:]) >= 3, timeout=5)
    processor.signal(signal.SIGTERM)
    receive_until(lambda: any("STOPPING=1" in m for m in messages))
    assert processor.wait(15) == 0
    listener.close()


def _run_cli(
    *args: str, env: dict | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_task_module_that_fails_to_import_exits_78(database_url):
    completed = _run_cli("--tasks", "no_such_module_here")
    assert completed.returncode == 78
    assert "cannot import task module 'no_such_module_here'" in completed.stderr


def test_invalid_options_exit_78_naming_the_option(database_url):
    completed = _run_cli("--numthreads", "0")
    assert completed.returncode == 78
    assert "--numthreads" in completed.stderr and "1 to 256" in completed.stderr
    completed = _run_cli(env={"TASK_PROCESSOR_SLEEP_INTERVAL_MS": "-5"})
    assert completed.returncode == 78 and "--sleepintervalms" in completed.stderr


def test_help_explains_that_numthreads_counts_processes():
    completed = _run_cli("--help")
    assert completed.returncode == 0
    assert "worker processes" in completed.stdout and "--graceperiodms" in completed.stdout


def test_crash_looping_task_module_stops_the_processor(database_url):
    completed = _run_cli("--tasks", "crashing_tasks", "--numthreads", "1", timeout=60)
    assert completed.returncode == 1
    assert "crash loop" in completed.stderr


def test_process_titles_name_role_and_slot_first(database_url, start_processor):
    processor = start_processor("--numthreads", "2")
    workers = processor.wait_ready(2)

    def title(pid: int) -> str:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode().strip()

    assert wait_for(lambda: title(processor.pid).startswith("tp-supervisor"))
    assert sorted(title(pid)[:11] for pid in workers) == ["tp-worker 0", "tp-worker 1"]
    wait_for(lambda: "idle" in title(workers[0]), message="an idle worker's title")


def test_the_database_password_never_reaches_the_log(database_url, start_processor):
    with_password = database_url.replace("postgres@", "postgres:s3cret-pw@")
    processor = start_processor("--numthreads", "1", env={"DATABASE_URL": with_password})
    processor.wait_ready(1)
    log = processor.log_text()
    assert "on 127.0.0.1:5432" in log and "s3cret-pw" not in log
