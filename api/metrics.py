"""``GET /metrics``: the cluster's view in Prometheus's text format, one query per scrape.

The gauges describe the queue and the processors as the database holds them, so any run-api
process gives the same answer and several may be scraped. What only a processor knows (attempts
finished, their durations, workers killed) is counted by the processor itself and served on its
own metrics port; every name here starts with ``task_processor_`` like those, and none is a
``_total`` counter, so both sets sit side by side in one Prometheus without clashing.

prometheus_client is an optional extra (``task-processor[metrics]``): without it ``/metrics``
answers 501 saying what to install.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from api.metrics_queries import Snapshot

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError:  # pragma: no cover - exercised by the extra's absence
    CollectorRegistry = None  # type: ignore[assignment,misc]

TASK_STATES = ("waiting", "running", "dead")
WORKER_STATES = ("booting", "idle", "busy")
PROCESSOR_STATES = ("running", "draining", "silent")

INSTALL_HINT = (
    "Prometheus metrics need prometheus_client: pip install 'task-processor[metrics]' "
    "(or pip install prometheus_client)"
)


def available() -> bool:
    return CollectorRegistry is not None


class ClusterCollector:
    """Turns one :class:`Snapshot` (read on each collect) into gauges."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        snapshot = self.read()
        yield from _task_metrics(snapshot)
        yield from _processor_metrics(snapshot)
        yield from _worker_metrics(snapshot)


def _task_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    tasks = GaugeMetricFamily(
        "task_processor_tasks",
        "Tasks by state (waiting, running, dead) and task identifier.",
        labels=["state", "task_identifier"],
    )
    due = GaugeMetricFamily(
        "task_processor_due_tasks",
        "Waiting tasks that are due now and that no worker has started.",
        labels=["task_identifier"],
    )
    oldest = GaugeMetricFamily(
        "task_processor_oldest_waiting_task_age_seconds",
        "How long the oldest due task of each identifier has waited; 0 when none is due.",
        labels=["task_identifier"],
    )
    for row in snapshot.tasks:
        identifier = row["identifier"]
        counts = {
            "waiting": row["due"] + row["scheduled"],
            "running": row["running"],
            "dead": row["dead"],
        }
        for state in TASK_STATES:
            tasks.add_metric([state, identifier], counts[state])
        due.add_metric([identifier], row["due"])
        oldest.add_metric([identifier], row["oldest_due_seconds"])
    yield from (tasks, due, oldest)


def _processor_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    processors = GaugeMetricFamily(
        "task_processor_processors",
        "Processors that have not stopped, by state; 'silent' ones missed their heartbeat for "
        "longer than their grace period (killed, frozen or cut off).",
        labels=["state"],
    )
    beat = GaugeMetricFamily(
        "task_processor_processor_heartbeat_age_seconds",
        "Seconds since each processor's supervisor last wrote its heartbeat.",
        labels=["processor_id", "host"],
    )
    for state in PROCESSOR_STATES:
        processors.add_metric([state], sum(1 for p in snapshot.processors if p["state"] == state))
    for row in snapshot.processors:
        beat.add_metric([row["id"], row["host"]], row["beat_age_seconds"])
    yield from (processors, beat)


def _worker_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    live = {p["id"] for p in snapshot.processors if p["state"] != "silent"}
    workers = GaugeMetricFamily(
        "task_processor_workers",
        "Worker processes of the live processors, by the state of their last heartbeat.",
        labels=["state"],
    )
    beat = GaugeMetricFamily(
        "task_processor_worker_heartbeat_age_seconds",
        "Seconds since each worker of a processor that has not stopped last beat.",
        labels=["processor_id", "slot"],
    )
    for state in WORKER_STATES:
        workers.add_metric(
            [state],
            sum(1 for w in snapshot.workers if w["state"] == state and w["processor_id"] in live),
        )
    for row in snapshot.workers:
        beat.add_metric([row["processor_id"], str(row["slot"])], row["beat_age_seconds"])
    yield from (workers, beat)


def render(read: Callable[[], Snapshot]) -> tuple[str, bytes]:
    """(content type, body) of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(read))
    return CONTENT_TYPE_LATEST, generate_latest(registry)
