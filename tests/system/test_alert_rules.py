"""The shipped alert rules, run by promtool against their unit tests, and the Grafana dashboard:
both may only name metrics that this project exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "task-processor-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "task-processor-rules.test.yml"
GRAFANA = ROOT / "deploy" / "grafana" / "task-processor-dashboard.json"
PROMTOOL = shutil.which("promtool")

# What run-api's /metrics serves (api/metrics.py), what applications count
# (common/enqueue_metrics.py), and the processors' own kill counter.
EXPORTED = {
    "task_processor_tasks",
    "task_processor_due_tasks",
    "task_processor_oldest_waiting_task_age_seconds",
    "task_processor_processors",
    "task_processor_processor_heartbeat_age_seconds",
    "task_processor_workers",
    "task_processor_worker_heartbeat_age_seconds",
    "task_processor_enqueued_tasks_total",
    "task_processor_workers_killed_total",
}

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed: apt-get install -y prometheus"
)


@needs_promtool
def test_the_rules_are_valid():
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_rules_pass_their_unit_tests():
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\btask_processor_[a-z_]+\b", text))


def test_the_rules_and_the_dashboard_name_only_exported_metrics():
    assert metric_names(RULES.read_text()) <= EXPORTED
    dashboard = json.loads(GRAFANA.read_text())
    expressions = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    )
    assert metric_names(expressions) <= EXPORTED
    assert metric_names(expressions) == EXPORTED - {
        "task_processor_processor_heartbeat_age_seconds"
    }


def test_the_cluster_metrics_are_the_ones_listed():
    pytest.importorskip("prometheus_client", reason="the 'metrics' extra is not installed")
    from api import metrics
    from api.metrics_queries import Snapshot

    snapshot = Snapshot(
        tasks=[
            {
                "identifier": "a",
                "due": 1,
                "scheduled": 0,
                "running": 0,
                "dead": 0,
                "oldest_due_seconds": 2.0,
            }
        ],
        processors=[{"id": "p", "host": "h", "state": "running", "beat_age_seconds": 0.1}],
        workers=[{"processor_id": "p", "slot": 0, "state": "idle", "beat_age_seconds": 0.2}],
    )
    names = {family.name for family in metrics.ClusterCollector(lambda: snapshot).collect()}
    assert names == EXPORTED - {
        "task_processor_enqueued_tasks_total",
        "task_processor_workers_killed_total",
    }
