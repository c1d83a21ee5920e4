"""Tasks of a processor that uses OpenTelemetry: like an application would, this module sets up
the SDK's tracer provider when the processor imports it (before the workers are forked), with
an exporter that appends each finished span, as one JSON line, to the file named by
TRACED_TASKS_SPANS. The file is opened per export, so every worker process appends its own."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from common.tasks import register_task_handler


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(json.loads(span.to_json())) + "\n" for span in spans)
        with open(self.path, "a") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


_provider = TracerProvider()
_provider.add_span_processor(
    SimpleSpanProcessor(JsonLinesExporter(os.environ["TRACED_TASKS_SPANS"]))
)
trace.set_tracer_provider(_provider)


@register_task_handler()
def traced(key: str) -> None:
    """Succeeds; a span of its own code, inside the attempt's, shows the attempt is current."""
    with trace.get_tracer(__name__).start_as_current_span(f"inside {key}"):
        pass


@register_task_handler(max_attempts=1)
def traced_failure() -> None:
    raise ValueError("this attempt fails on purpose")
