"""Starting and stopping while the database is unreachable: a processor waits for it at
start and can be stopped meanwhile; a worker asked to stop leaves without waiting for it."""

from __future__ import annotations

import re
import signal
import time

import processor_tasks
import pytest
from harness import task_states, wait_for
from tcp_proxy import TcpProxy


@pytest.fixture
def proxy():
    tcp_proxy = TcpProxy()
    yield tcp_proxy
    tcp_proxy.cut()


def test_a_worker_asked_to_stop_while_the_database_is_down_leaves_at_once(
    database_url, start_processor, proxy
):
    # An idle worker touches the database only when woken: the processor's fallback check
    # (every 200 ms here) wakes it, and it finds the database gone.
    processor = start_processor(
        "--numthreads",
        "1",
        "--drain-timeout",
        "60",
        "--graceperiodms",
        "60000",
        "--sleepintervalms",
        "200",
        env={"DATABASE_URL": proxy.url(database_url)},
    )
    processor.wait_ready(1)
    proxy.cut()
    wait_for(
        lambda: re.search(r"\[worker 0 .*database unavailable", processor.log_text()),
        message="the worker to find the database gone",
    )
    processor.signal(signal.SIGTERM)
    stopped = time.monotonic()
    # Leaving at the drain deadline (60 s) would fail here; promptly is a few seconds at most.
    assert processor.wait(timeout=20) == 0
    log = processor.log_text()
    assert log.count("leaves without waiting for the database") == 1, log
    assert "killed at the drain deadline" not in log
    print(f"stopped {time.monotonic() - stopped:.2f} s after SIGTERM")


def test_a_processor_started_while_the_database_is_down_starts_when_it_returns(
    database_url, start_processor, proxy, results
):
    proxy.cut()
    processor = start_processor("--numthreads", "1", env={"DATABASE_URL": proxy.url(database_url)})
    wait_for(
        lambda: "database unavailable at start" in processor.log_text(),
        message="the processor to wait for the database",
    )
    assert processor.process.poll() is None and processor.worker_pids() == []
    proxy.restore()
    processor.wait_ready(1, timeout=40)
    processor_tasks.record.delay(args=("after the outage",))
    wait_for(lambda: task_states(database_url).get("succeeded") == 1, timeout=30)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_processor_waiting_for_the_database_at_start_stops_on_a_signal(
    database_url, start_processor, proxy, signum
):
    proxy.cut()
    processor = start_processor("--numthreads", "1", env={"DATABASE_URL": proxy.url(database_url)})
    wait_for(
        lambda: "database unavailable at start" in processor.log_text(),
        message="the processor to wait for the database",
    )
    processor.signal(signum)
    assert processor.wait(timeout=20) == 0
    assert f"stopping before start: got {signal.Signals(signum).name}" in processor.log_text()
