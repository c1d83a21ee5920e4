"""OpenTelemetry traces across the queue, for applications that use OpenTelemetry.

``.delay()`` stores the W3C trace context (``traceparent``, ``tracestate``) of the span active
in its thread with the task; each attempt then runs in a span whose parent is that context
(worker/tracing.py).

Nothing here imports OpenTelemetry. A span can be active only in a process that imported
``opentelemetry.trace``, and a worker can export spans only if something in it (its task
modules, imported before the fork) set up a tracer provider, which imports it too; so every
function first looks whether ``opentelemetry.trace`` is in ``sys.modules`` and does nothing
else when it is not: a dict lookup per enqueue and per attempt, whether or not the
``tracing`` extra is installed.
"""

from __future__ import annotations

import json
import sys

_API = "opentelemetry.trace"
TRACER_NAME = "task_processor"
FLUSH_TIMEOUT_MS = 2000


def in_use() -> bool:
    """Does this process use OpenTelemetry (has it imported its tracing API)?"""
    return _API in sys.modules


def current_context() -> str | None:
    """The W3C trace context of the span active in this thread, as JSON text; None when no
    span is active (or OpenTelemetry is not in use)."""
    if _API not in sys.modules:
        return None
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return json.dumps(carrier, sort_keys=True) if carrier else None


def carrier(stored: str | None) -> dict[str, str]:
    """The stored context as the propagator reads it; a row written by hand that holds
    something else starts a trace of its own instead of failing the attempt."""
    if not stored:
        return {}
    try:
        carrier = json.loads(stored)
    except ValueError:
        return {}
    if not isinstance(carrier, dict):
        return {}
    return {str(key): str(value) for key, value in carrier.items()}


def flush() -> None:
    """Export the spans still queued (a batch span processor): a worker leaves through
    ``os._exit``, which runs no exit handler that would."""
    if _API not in sys.modules:
        return
    from opentelemetry import trace

    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush(FLUSH_TIMEOUT_MS)
