"""The round-trip check of ``/health``: a task enqueued by the API, run by a live processor."""

from __future__ import annotations

import re
import threading

from api_support import PROCESSOR_ARGS, api_server
from databases import fetch_all
from harness import wait_for

PROBE_TASK = "health.round_trip_health_check"
ROUND_TRIP = {
    "ENABLE_TASK_PROCESSOR_HEALTH_CHECK": "True",
    "TASK_PROCESSOR_HEALTH_CHECK_TIMEOUT": "1.5",
}


def leftovers(conn) -> tuple[list, list]:
    """Probe rows, and probe tasks nobody ran, left after the API answered."""
    return (
        fetch_all(conn, "SELECT id FROM task_processor.health_checks"),
        fetch_all(
            conn,
            "SELECT id FROM task_processor.tasks WHERE state = 'waiting' AND identifier = %s",
            (PROBE_TASK,),
        ),
    )


def start_live_processor(start) -> None:
    """Start a processor with the ``start_processor`` fixture; return once its workers beat."""
    start(*PROCESSOR_ARGS).wait_ready(2)


def probe_runs(conn) -> list[tuple]:
    """(task id, priority, result) of every attempt of a probe task."""
    return fetch_all(
        conn,
        "SELECT t.id, t.priority, r.result FROM task_processor.runs r "
        "JOIN task_processor.tasks t ON t.id = r.task_id "
        "WHERE t.identifier = %s",
        (PROBE_TASK,),
    )


def test_round_trip_works_with_a_running_processor(database_url, conn, start_processor):
    start_live_processor(start_processor)
    with api_server(database_url, **ROUND_TRIP) as server:
        status, _, body = server.get("/health?format=json")
        assert (status, body) == (200, {"database": "working", "task_processor": "working"})
        assert leftovers(conn) == ([], [])
        runs = wait_for(lambda: probe_runs(conn), message="the probe's run")
    assert [(priority, result) for _, priority, result in runs] == [(0, "success")]  # HIGHEST


def test_round_trip_failure_is_reported_with_200_and_leaves_nothing(database_url, conn):
    with api_server(database_url, **ROUND_TRIP) as server:
        status, _, body = server.get("/health?format=json")
    assert status == 200  # not critical
    assert body["database"] == "working"
    assert "did not run the health-check task" in body["task_processor"]
    assert "within 1.5 s" in body["task_processor"]
    assert leftovers(conn) == ([], [])


def test_concurrent_probes_share_one_task(database_url, conn):
    answers: list[tuple[int, dict]] = []
    # Probes are shared within one API process: with one, the burst makes one task.
    with api_server(database_url, **ROUND_TRIP, TASK_PROCESSOR_API_WORKERS="1") as server:
        start = threading.Barrier(6)

        def ask() -> None:
            start.wait()
            status, _, body = server.get("/health?format=json")
            answers.append((status, body))

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(answers) == 6
    assert all(
        status == 200 and "did not run" in body["task_processor"] for status, body in answers
    )
    # One task was ever inserted (the sequence moved once) and none is left.
    assert fetch_all(conn, "SELECT last_value, is_called FROM task_processor.tasks_id_seq") == [
        (1, True)
    ]
    assert leftovers(conn) == ([], [])


def test_a_late_processor_does_not_run_an_abandoned_probe(database_url, conn, start_processor):
    with api_server(database_url, **ROUND_TRIP) as server:
        failure = server.get("/health?format=json")[2]["task_processor"]
    first_task_id = int(re.search(r"health-check task \(id (\d+)\)", failure)[1])
    start_live_processor(start_processor)
    with api_server(database_url, **ROUND_TRIP) as server:
        assert server.get("/health?format=json")[2]["task_processor"] == "working"
        runs = wait_for(lambda: probe_runs(conn), message="the second probe's run")
    # Only the second probe's task ever ran: the first was deleted when its probe gave up.
    assert len(runs) == 1 and runs[0][0] != first_task_id
    assert (
        fetch_all(conn, "SELECT id FROM task_processor.tasks WHERE id = %s", (first_task_id,)) == []
    )


def test_round_trip_is_not_run_when_the_database_is_down():
    with api_server("postgresql://postgres@127.0.0.1:1/nowhere", **ROUND_TRIP) as server:
        status, _, body = server.get("/health?format=json")
    assert status == 500
    assert body["task_processor"] == "not run: the database check failed"
