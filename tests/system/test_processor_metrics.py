"""The processor's own metrics on --metrics-bind: attempts, durations, start delays and worker
kills counted by real workers and supervisors, scraped over HTTP from the metrics server
process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import psutil
import pytest

prometheus_client = pytest.importorskip(
    "prometheus_client",
    reason="prometheus_client is the 'metrics' extra: pip install 'task-processor[metrics]'",
)
import processor_tasks  # noqa: E402
from harness import REPO, SUPPORT, task_states, wait_for  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = pytest.mark.slow

_LISTENING = re.compile(r"metrics on http://([^ ]+)/metrics")


def metrics_url(processor) -> str:
    found = wait_for(
        lambda: _LISTENING.search(processor.log_text()),
        20,
        message="the metrics server's address in the log",
    )
    return f"http://{found.group(1)}/metrics"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(got: dict, name: str, **labels: str) -> float:
    return got.get((name, tuple(sorted(labels.items()))), 0.0)


def workers_only(processor) -> list[int]:
    return [
        pid
        for pid in processor.worker_pids()
        if "tp-metrics-server" not in " ".join(psutil.Process(pid).cmdline())
    ]


def finished(identifier: str, result: str, task_type: str = "standard") -> dict[str, str]:
    return {"task_identifier": identifier, "task_type": task_type, "result": result}


def test_attempts_durations_delays_and_kills_are_counted_across_worker_restarts(
    start_processor, database_url, results
):
    processor = start_processor(
        "--numthreads", "2", "--metrics-bind", "127.0.0.1:0", "--graceperiodms", "3000"
    )
    url = metrics_url(processor)
    processor.wait_ready(2)
    got = scrape(url)
    assert value(got, "task_processor_workers_started_total") == 2
    assert value(got, "task_processor_workers_killed_total", reason="timeout") == 0
    # The retention clean-up of the first start is a recurring task.
    assert (
        value(
            got,
            "task_processor_finished_tasks_total",
            **finished("retention.clean_up_old_tasks", "success", "recurring"),
        )
        == 1
    )

    for key in ("a", "b", "c"):
        processor_tasks.record.delay(args=(key,))
    processor_tasks.always_fails.delay(args=("f",))  # 3 attempts, then dead
    processor_tasks.overrun_slightly.delay(args=("o",))  # ends past its 1 s: a timeout
    processor_tasks.hang_in_python.delay()  # killed at its deadline, twice
    wait_for(
        lambda: task_states(database_url) == {"succeeded": 3, "dead": 3},
        60,
        message="every task finished",
    )

    got = scrape(url)
    record = "processor_tasks.record"
    assert value(got, "task_processor_finished_tasks_total", **finished(record, "success")) == 3
    assert (
        value(got, "task_processor_task_duration_seconds_count", **finished(record, "success")) == 3
    )
    assert (
        value(
            got,
            "task_processor_finished_tasks_total",
            **finished("processor_tasks.always_fails", "failure"),
        )
        == 3
    )
    overrun = finished("processor_tasks.overrun_slightly", "timeout")
    assert value(got, "task_processor_finished_tasks_total", **overrun) == 1
    assert value(got, "task_processor_task_duration_seconds_sum", **overrun) >= 1.0
    assert value(got, "task_processor_task_duration_seconds_bucket", le="0.5", **overrun) == 0
    assert value(got, "task_processor_task_duration_seconds_bucket", le="2.5", **overrun) == 1
    delays = {"task_identifier": record, "task_type": "standard"}
    assert value(got, "task_processor_task_start_delay_seconds_count", **delays) == 3
    assert value(got, "task_processor_task_start_delay_seconds_bucket", le="+Inf", **delays) == 3
    # The hanging task's two attempts were never finished by a worker: they are kills.
    assert value(got, "task_processor_workers_killed_total", reason="timeout") == 2
    assert (
        value(
            got,
            "task_processor_finished_tasks_total",
            **finished("processor_tasks.hang_in_python", "timeout"),
        )
        == 0
    )
    assert value(got, "task_processor_workers_started_total") == 4
    assert value(got, "task_processor_lease_renewals_failed_total") == 0

    # Workers killed from outside: counted as died; their successors keep the counts.
    for pid in workers_only(processor):
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: value(scrape(url), "task_processor_workers_started_total") == 6,
        30,
        message="both workers replaced",
    )
    processor.wait_ready(2)
    got = scrape(url)
    assert value(got, "task_processor_workers_killed_total", reason="died") == 2
    assert value(got, "task_processor_finished_tasks_total", **finished(record, "success")) == 3
    processor_tasks.record.delay(args=("d",))
    wait_for(
        lambda: (
            value(scrape(url), "task_processor_finished_tasks_total", **finished(record, "success"))
            == 4
        ),
        30,
        message="the fourth success counted on top of the first three",
    )


def test_a_killed_metrics_server_is_restarted_with_the_same_totals(start_processor):
    processor = start_processor("--numthreads", "1", "--metrics-bind", "127.0.0.1:0")
    url = metrics_url(processor)
    processor.wait_ready(1)
    before = scrape(url)
    (server,) = [
        child
        for child in psutil.Process(processor.pid).children()
        if "tp-metrics-server" in " ".join(child.cmdline())
    ]
    server.kill()
    after = wait_for(lambda: _scrape_or_none(url), 20, message="the restarted metrics server")
    assert (
        value(after, "task_processor_workers_started_total")
        == value(before, "task_processor_workers_started_total")
        == 1
    )
    assert "restarting it" in processor.log_text()


def _scrape_or_none(url: str) -> dict | None:
    try:
        return scrape(url)
    except OSError:
        return None


def test_metrics_bind_without_prometheus_client_exits_78_saying_what_to_install(
    database_url, tmp_path
):
    hidden = tmp_path / "prometheus_client"
    hidden.mkdir()
    (hidden / "__init__.py").write_text(
        "raise ImportError(\"No module named 'prometheus_client'\")\n"
    )
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SUPPORT), str(REPO)]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "--metrics-bind", "127.0.0.1:0"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78, done.stderr
    assert "pip install 'task-processor[metrics]'" in done.stderr


def test_metrics_bind_on_a_taken_address_exits_78(database_url):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
        }
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisor.cli",
                "--metrics-bind",
                f"127.0.0.1:{taken.getsockname()[1]}",
            ],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert done.returncode == 78, done.stderr
    assert "cannot serve metrics on 127.0.0.1:" in done.stderr
