"""Processors on separate hosts (PID and UTS namespaces of their own) sharing one queue: a host
killed whole has its tasks run elsewhere once their lease expires and never sooner, and shows
as gone in check-health; three hosts drain one queue with nothing lost and nothing run twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import processor_tasks
import pytest
from api_support import check_health
from harness import query, task_states, wait_for
from hosts import Host, missing
from processor_tasks import EXECUTIONS_TABLE

pytestmark = pytest.mark.slow

LEASE_SECONDS = 4
HOST_ARGS = (
    "--numthreads",
    "2",
    "--sleepintervalms",
    "200",
    "--graceperiodms",
    "2000",
    "--lease-seconds",
    str(LEASE_SECONDS),
)


@pytest.fixture
def start_host(database_url, tmp_path, monkeypatch) -> Iterator[Callable[[str], Host]]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    started: list[Host] = []

    def start(name: str) -> Host:
        host = Host(name, database_url, tmp_path / f"{name}.log", *HOST_ARGS)
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


def ready(database_url: str, *hosts: str) -> None:
    wait_for(
        lambda: (
            {
                row[0]
                for row in query(
                    database_url,
                    "SELECT p.host FROM task_processor.processors p JOIN "
                    "task_processor.workers w ON w.processor_id = p.id "
                    "WHERE p.state = 'running'",
                )
            }
            >= set(hosts)
        ),
        timeout=60,
        message=f"hosts {hosts} running",
    )


def test_a_killed_hosts_task_runs_elsewhere_once_its_lease_expires(
    start_host, database_url, results
):
    doomed = start_host("host-doomed")
    ready(database_url, "host-doomed")
    task_id = processor_tasks.sleep_then_record.delay(args=("long", 600))
    wait_for(lambda: results("long:started"), timeout=60, message="the task started")
    survivor = start_host("host-survivor")
    ready(database_url, "host-survivor")
    (doomed_id,) = query(
        database_url, "SELECT id FROM task_processor.processors WHERE host = 'host-doomed'"
    )[0]

    doomed.kill()
    killed_at, lease_expires_at = query(
        database_url,
        "SELECT now(), lease_expires_at FROM task_processor.tasks WHERE id = %s",
        (task_id,),
    )[0]

    restarted = wait_for(
        lambda: query(
            database_url,
            "SELECT at FROM test_results WHERE key = 'long:started' ORDER BY at OFFSET 1",
        ),
        timeout=60,
        message="the task run again",
    )[0][0]
    # Never before the lease that the dead host last renewed ran out...
    assert restarted >= lease_expires_at
    # ... and on the other host.
    assert query(
        database_url,
        "SELECT p.host FROM task_processor.tasks t JOIN "
        "task_processor.processors p ON starts_with(t.lease_owner, p.id)"
        " WHERE t.id = %s",
        (task_id,),
    ) == [("host-survivor",)]
    print(
        f"run again {(restarted - killed_at).total_seconds():.1f} s after the kill, "
        f"lease {LEASE_SECONDS} s"
    )

    health = check_health(database_url, "--all")
    assert health.returncode == 1
    assert f"processor {doomed_id}" in health.stdout and "dead" in health.stdout
    assert "host-survivor" not in health.stdout
    assert survivor.unshare.poll() is None


def test_three_hosts_drain_one_queue_exactly_once(start_host, database_url):
    query(database_url, EXECUTIONS_TABLE)
    names = ["host-a", "host-b", "host-c"]
    for name in names:
        start_host(name)
    ready(database_url, *names)
    count = 300
    processor_tasks.execution.delay_many([{"args": (f"task-{n}", 0.01)} for n in range(count)])

    wait_for(
        lambda: task_states(database_url, "processor_tasks.execution") == {"succeeded": count},
        timeout=120,
        message="the queue drained",
    )

    rows = query(database_url, "SELECT key, host, started_at, ended_at FROM test_executions")
    runs = Counter(key for key, _, _, _ in rows)
    assert set(runs) == {f"task-{n}" for n in range(count)}  # nothing lost
    assert max(runs.values()) == 1  # nothing run twice, at once or otherwise
    assert {host for _, host, _, _ in rows} == set(names)  # every host took a share
