-- The W3C trace context (traceparent, and tracestate when there is one) of the span that was
-- active when the task was enqueued, so that each attempt's span joins the enqueuer's trace
-- (common/tracing.py). NULL when the enqueuer had no span or no OpenTelemetry. A nullable
-- column without a default rewrites nothing: instant on a large queue.
ALTER TABLE task_processor.tasks ADD COLUMN trace_context jsonb;
