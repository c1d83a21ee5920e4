"""OpenTelemetry traces across the queue: the span active at .delay() is stored with the task,
and a real processor runs each attempt in a span whose parent it is; without OpenTelemetry in
a process, nothing of it is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "opentelemetry.sdk.trace",
    reason="tracing is the 'tracing' extra; the "
    "tests need the SDK too: pip install opentelemetry-sdk",
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

os.environ.setdefault("TRACED_TASKS_SPANS", os.devnull)  # the test process exports nothing
import traced_tasks
from harness import REPO, SUPPORT, query, task_states, wait_for


def exported_spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def attempt_span(spans: list[dict], identifier: str) -> dict | None:
    return next((span for span in spans if span["name"] == identifier), None)


def test_each_attempt_runs_in_a_span_whose_parent_is_the_span_that_enqueued_it(
    start_processor, database_url, tmp_path
):
    spans_file = tmp_path / "spans.jsonl"
    enqueuer = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(enqueuer))
    with provider.get_tracer("the application").start_as_current_span("POST /signup"):
        ok_id = traced_tasks.traced.delay(args=("ok",))
        failing_id = traced_tasks.traced_failure.delay()
    untraced_id = traced_tasks.traced.delay(args=("untraced",))
    (request,) = enqueuer.get_finished_spans()
    trace_id = f"{request.context.trace_id:032x}"
    request_span_id = f"{request.context.span_id:016x}"
    (stored,) = query(
        database_url, "SELECT trace_context FROM task_processor.tasks WHERE id = %s", (ok_id,)
    )[0]
    assert stored["traceparent"].startswith(f"00-{trace_id}-{request_span_id}-")

    start_processor(
        "--numthreads", "1", tasks=["traced_tasks"], env={"TRACED_TASKS_SPANS": str(spans_file)}
    )
    wait_for(
        lambda: task_states(database_url, "traced_tasks.") == {"succeeded": 2, "dead": 1},
        60,
        message="the traced tasks finished",
    )
    spans = wait_for(
        lambda: (
            (s := exported_spans(spans_file))
            and len([x for x in s if x["name"].startswith("traced_tasks.")]) == 3
            and s
        ),
        20,
        message="three attempt spans exported",
    )

    by_task = {
        span["attributes"]["task_processor.task_id"]: span
        for span in spans
        if span["name"].startswith("traced_tasks.")
    }
    ok, failing, untraced = by_task[ok_id], by_task[failing_id], by_task[untraced_id]
    for span in (ok, failing):
        assert span["context"]["trace_id"] == f"0x{trace_id}"
        assert span["parent_id"] == f"0x{request_span_id}"
        assert span["kind"] == "SpanKind.CONSUMER"
    assert ok["name"] == "traced_tasks.traced"
    assert ok["attributes"] == {
        "task_processor.task_identifier": "traced_tasks.traced",
        "task_processor.task_id": ok_id,
        "task_processor.attempt": 1,
        "task_processor.result": "success",
    }
    assert ok["status"]["status_code"] == "UNSET"
    assert failing["attributes"]["task_processor.result"] == "failure"
    assert failing["status"]["status_code"] == "ERROR"
    assert "this attempt fails on purpose" in failing["status"]["description"]
    # Enqueued outside any span: a trace of its own.
    assert untraced["parent_id"] is None
    assert untraced["context"]["trace_id"] != f"0x{trace_id}"
    # The task's own spans are children of its attempt's.
    inside = next(span for span in spans if span["name"] == "inside ok")
    assert inside["parent_id"] == ok["context"]["span_id"]


def test_without_opentelemetry_in_use_nothing_of_it_is_imported(
    start_processor, database_url, results
):
    """The application enqueues and the processor runs without importing OpenTelemetry,
    although it is installed here."""
    start_processor("--numthreads", "1")
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TASK_RUN_METHOD": "TASK_PROCESSOR",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
    }
    script = (
        "import sys\n"
        "from processor_tasks import records_whether_opentelemetry_is_loaded as task\n"
        "task.delay(args=('worker',))\n"
        "print('opentelemetry' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    wait_for(lambda: results("worker:False") or results("worker:True"), 30, message="the task ran")
    assert results("worker:False")
    assert not results("worker:True")
    assert query(
        database_url,
        "SELECT trace_context FROM task_processor.tasks WHERE identifier LIKE %s",
        ("%opentelemetry%",),
    ) == [(None,)]
