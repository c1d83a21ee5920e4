"""The metrics server process of ``--metrics-bind``: renders the metrics board at each scrape.

It runs in a process of its own, forked by the supervisor (supervisor/metrics.py), and is the
only process of a processor with a prometheus_client thread in it. Each scrape reads the
supervisor's page and the pages of every slot that ever had a worker, adds them up and renders
them; nothing is kept between scrapes, so a restarted server serves the same totals.

This module imports prometheus_client: ``run-task-processor`` imports it only with
``--metrics-bind``, and exits 78 saying what to install when it is missing.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import NoReturn

import setproctitle
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.metrics import KILL_REASONS
from worker.metrics import DURATION_BUCKETS, START_DELAY_BUCKETS, MetricsBoard, Series

PROCESS_TITLE = "tp-metrics-server"


class BoardCollector(Collector):
    """The processor's metrics, summed over every worker slot's page."""

    def __init__(self, board: MetricsBoard) -> None:
        self.board = board
        self.supervisor_page = board.pages - 1

    def collect(self) -> Iterator[Metric]:
        slots_used, started, killed, renewals_failed = self.board.read(self.supervisor_page) or (
            0,
            0,
            {},
            0,
        )
        durations: dict[tuple, Series] = {}
        start_delays: dict[tuple, Series] = {}
        for page in range(slots_used):
            published = self.board.read(page)
            if published:
                _add(durations, published[0])
                _add(start_delays, published[1])

        finished = CounterMetricFamily(
            "task_processor_finished_tasks",
            "Attempts finished by this processor's workers.",
            labels=["task_identifier", "task_type", "result"],
        )
        duration = HistogramMetricFamily(
            "task_processor_task_duration_seconds",
            "How long each attempt ran.",
            labels=["task_identifier", "task_type", "result"],
        )
        for key, series in sorted(durations.items()):
            finished.add_metric(list(key), sum(series[:-1]))
            duration.add_metric(list(key), _buckets(series, DURATION_BUCKETS), series[-1])
        start_delay = HistogramMetricFamily(
            "task_processor_task_start_delay_seconds",
            "From when a task was due (enqueued, or its delay_until or retry time) to the "
            "start of its attempt.",
            labels=["task_identifier", "task_type"],
        )
        for key, series in sorted(start_delays.items()):
            start_delay.add_metric(list(key), _buckets(series, START_DELAY_BUCKETS), series[-1])
        yield from (finished, duration, start_delay)

        kills = CounterMetricFamily(
            "task_processor_workers_killed",
            "Worker processes that ended without being asked to stop, by reason.",
            labels=["reason"],
        )
        for reason in sorted({*KILL_REASONS, *killed}):
            kills.add_metric([reason], killed.get(reason, 0))
        yield kills
        yield CounterMetricFamily(
            "task_processor_workers_started", "Worker processes started.", value=started
        )
        yield CounterMetricFamily(
            "task_processor_lease_renewals_failed",
            "Lease renewals that were due and failed (database unreachable or too slow).",
            value=renewals_failed,
        )


def serve(board: MetricsBoard, host: str, port: int, report: int) -> NoReturn:
    """Serve ``board`` on ``host:port`` for ever; say the port (or why not) on ``report``."""
    setproctitle.setproctitle(PROCESS_TITLE)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BoardCollector(board))
    try:
        server, _ = start_http_server(port, host, registry)
    except OSError as error:
        _say(report, {"error": error.strerror or str(error)})
        os._exit(1)
    _say(report, {"port": server.server_address[1]})
    while True:
        signal.pause()  # the server thread works; SIGTERM or SIGKILL ends the process


def _say(fd: int, answer: dict) -> None:
    os.write(fd, json.dumps(answer).encode() + b"\n")
    os.close(fd)


def _add(total: dict[tuple, Series], published: dict[tuple, Series]) -> None:
    for key, series in published.items():
        into = total.get(key)
        if into is None:
            total[key] = list(series)
        else:
            for index, value in enumerate(series):
                into[index] += value


def _buckets(series: Series, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative ``le`` buckets."""
    cumulative, buckets = 0, []
    for bound, count in zip(bounds, series[:-1], strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return buckets
