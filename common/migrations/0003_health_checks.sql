-- Round-trip health probes of the HTTP API: the API inserts a row and a task in one
-- transaction, the processor runs the task, which marks the row completed; the API then deletes
-- the row (and, when the probe timed out, the task if it is still waiting).

CREATE TABLE task_processor.health_checks (
    id           bigserial   PRIMARY KEY,
    task_id      bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
