"""Each attempt in a span of its own, joined to the trace of the span that enqueued its task
(see common/tracing.py: nothing is imported, and nothing done, unless the worker's process
uses OpenTelemetry).

The span is of kind CONSUMER, named after the task's identifier, with the identifier, task id,
attempt and result as attributes, and an error status when the attempt did not succeed.
"""

from __future__ import annotations

from collections.abc import Callable

from common import tracing
from worker.runner import ClaimedTask, Outcome


def run_in_span(task: ClaimedTask, run: Callable[[], Outcome]) -> Outcome:
    """``run()`` the attempt of ``task`` inside its span, when OpenTelemetry is in use."""
    if not tracing.in_use():
        return run()
    return _run_traced(task, run)


def _run_traced(task: ClaimedTask, run: Callable[[], Outcome]) -> Outcome:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(tracing.carrier(task.trace_context))
    tracer = trace.get_tracer(tracing.TRACER_NAME)
    with tracer.start_as_current_span(
        task.identifier,
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "task_processor.task_identifier": task.identifier,
            "task_processor.task_id": task.id,
            "task_processor.attempt": task.attempt,
        },
    ) as span:
        outcome = run()
        span.set_attribute("task_processor.result", outcome.result)
        if outcome.result != "success":
            last_line = (outcome.error or outcome.result).strip().splitlines()[-1:]
            span.set_status(
                trace.Status(trace.StatusCode.ERROR, last_line[0] if last_line else outcome.result)
            )
    return outcome
