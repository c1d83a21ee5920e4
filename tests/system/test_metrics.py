"""Prometheus metrics: the cluster's gauges on run-api's /metrics (real processes, real
database), and the application's enqueue counter on the default registry."""

from __future__ import annotations

import pytest

prometheus_client = pytest.importorskip(
    "prometheus_client",
    reason="prometheus_client is the 'metrics' extra: pip install 'task-processor[metrics]'",
)
from api_support import PROCESSOR_ARGS, api_server  # noqa: E402
from databases import fetch_all  # noqa: E402
from harness import wait_for  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(name, sorted labels): value} of a scrape."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(server, **headers: str) -> dict[tuple[str, tuple], float]:
    status, head, body = server.raw("/metrics", headers)
    assert status == 200, body
    assert head["Content-Type"].startswith("text/plain; version=")
    return samples(body.decode())


def add_tasks(conn, identifier: str, state: str, count: int, due_seconds_ago: float = 0) -> None:
    fetch_all(
        conn,
        """
        INSERT INTO task_processor.tasks (identifier, state, scheduled_for)
        SELECT %s, %s, now() - make_interval(secs => %s) FROM generate_series(1, %s)
        RETURNING id""",
        (identifier, state, due_seconds_ago, count),
    )


def test_tasks_by_state_and_identifier_due_and_oldest(conn, database_url):
    add_tasks(conn, "mail.send", "waiting", 3, due_seconds_ago=120)
    add_tasks(conn, "mail.send", "waiting", 2, due_seconds_ago=-3600)  # delayed
    add_tasks(conn, "mail.send", "dead", 4)
    add_tasks(conn, "report.build", "running", 1)
    add_tasks(conn, "report.build", "succeeded", 7)  # history: not a gauge

    with api_server(database_url) as server:
        got = scrape(server)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("task_processor_tasks", state="waiting", task_identifier="mail.send") == 5
    assert value("task_processor_tasks", state="dead", task_identifier="mail.send") == 4
    assert value("task_processor_tasks", state="running", task_identifier="report.build") == 1
    assert value("task_processor_due_tasks", task_identifier="mail.send") == 3
    assert value("task_processor_due_tasks", task_identifier="report.build") == 0
    assert (
        120
        <= value("task_processor_oldest_waiting_task_age_seconds", task_identifier="mail.send")
        < 120 + 300
    )
    assert not any(labels and ("state", "succeeded") in labels for _, labels in got)
    assert value("task_processor_processors", state="running") == 0


def test_live_processor_and_its_workers(database_url, start_processor):
    processor = start_processor(*PROCESSOR_ARGS, tasks=())
    processor.wait_ready(2)
    with api_server(database_url) as server:
        wait_for(
            lambda: (
                sum(
                    value
                    for (name, labels), value in scrape(server).items()
                    if name == "task_processor_workers"
                )
                == 2
            ),
            timeout=30,
        )
        got = scrape(server)
        processor.stop()  # kill -9: the heartbeat goes stale, the processor turns silent
        wait_for(
            lambda: scrape(server)[("task_processor_processors", (("state", "silent"),))] == 1,
            timeout=30,
        )
    assert got[("task_processor_processors", (("state", "running"),))] == 1
    assert got[("task_processor_workers", (("state", "idle"),))] == 2
    beats = [
        value
        for (name, _), value in got.items()
        if name == "task_processor_worker_heartbeat_age_seconds"
    ]
    assert len(beats) == 2 and all(0 <= beat < 30 for beat in beats)


def test_metrics_require_the_monitoring_token_when_one_is_set(database_url):
    with api_server(database_url, TASK_PROCESSOR_MONITORING_TOKEN="s3cret") as server:
        assert server.raw("/metrics")[0] == 401
        assert server.raw("/metrics", {"Authorization": "Bearer wrong"})[0] == 401
        assert scrape(server, Authorization="Bearer s3cret")


def test_delay_counts_enqueued_tasks_on_the_default_registry(database_url, monkeypatch):
    from processor_tasks import noop, record

    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    registry = prometheus_client.REGISTRY

    def enqueued(identifier: str) -> float:
        return (
            registry.get_sample_value(
                "task_processor_enqueued_tasks_total", {"task_identifier": identifier}
            )
            or 0.0
        )

    before_record, before_noop = enqueued(record.identifier), enqueued(noop.identifier)
    record.delay(args=("a",))
    noop.delay_many([{}, {}, {}])
    assert enqueued(record.identifier) == before_record + 1
    assert enqueued(noop.identifier) == before_noop + 3
