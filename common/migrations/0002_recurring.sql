-- Recurring tasks: one definition row per identifier, a fixed schedule grid, and one task per
-- grid slot at most (the unique index on tasks makes "exactly once per period" a database rule).

-- The grid is grid_origin + k * run_every_us. next_run_at is always a grid point: the first one
-- that has not been enqueued yet. A processor that finds it due enqueues the latest grid point
-- that has passed (one run after any downtime) and moves next_run_at past now().
CREATE TABLE task_processor.recurring_tasks (
    identifier     text        PRIMARY KEY,
    run_every_us   bigint      NOT NULL CHECK (run_every_us > 0),
    first_run_time timestamptz,               -- as defined in code; NULL: from the first start
    grid_origin    timestamptz NOT NULL,
    args           jsonb       NOT NULL DEFAULT '[]',
    kwargs         jsonb       NOT NULL DEFAULT '{}',
    next_run_at    timestamptz NOT NULL,
    defined_at     timestamptz NOT NULL DEFAULT now(),  -- last written by a processor that has it
    defined_by     text        NOT NULL
);
-- The due check: one range scan of this index.
CREATE INDEX recurring_tasks_next_run_idx ON task_processor.recurring_tasks (next_run_at);

-- Which recurring identifiers each processor start knows, so that a definition removed from the
-- code is retired only once no live processor still has it (rolling deploys).
CREATE TABLE task_processor.processor_recurring_tasks (
    identifier   text NOT NULL,
    processor_id text NOT NULL REFERENCES task_processor.processors (id) ON DELETE CASCADE,
    PRIMARY KEY (identifier, processor_id)
);
CREATE INDEX processor_recurring_tasks_processor_idx
    ON task_processor.processor_recurring_tasks (processor_id);

-- A recurring run is a normal task that also names its definition and grid slot.
ALTER TABLE task_processor.tasks
    ADD COLUMN recurring_identifier text,
    ADD COLUMN recurring_slot       timestamptz,
    ADD CONSTRAINT tasks_recurring_slot_pair
        CHECK ((recurring_identifier IS NULL) = (recurring_slot IS NULL));
CREATE UNIQUE INDEX tasks_recurring_slot_key
    ON task_processor.tasks (recurring_identifier, recurring_slot)
    WHERE recurring_identifier IS NOT NULL;

-- The latest grid point at or before ``at`` (the origin itself when ``at`` is earlier).
-- Exact to the microsecond: epoch differences are numeric, and the product is a whole number
-- of microseconds well within float8's exact range.
CREATE FUNCTION task_processor.recurring_slot_at_or_before(
    origin timestamptz, run_every_us bigint, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT origin + interval '1 microsecond' * (run_every_us * greatest(0, floor(
        extract(epoch FROM at - origin) * 1000000 / run_every_us)))::float8
$$;

-- The earliest grid point at or after ``at`` (the origin itself when ``at`` is earlier).
CREATE FUNCTION task_processor.recurring_slot_at_or_after(
    origin timestamptz, run_every_us bigint, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE WHEN at <= origin THEN origin
                ELSE task_processor.recurring_slot_at_or_before(
                         origin, run_every_us, at - interval '1 microsecond')
                     + run_every_us * interval '1 microsecond'
           END
$$;

-- What operators look at: each definition with its latest run, so a run that keeps failing is
-- visible (state, attempts, last error) while the schedule goes on.
CREATE VIEW task_processor.recurring_task_status AS
SELECT r.identifier, r.run_every_us * interval '1 microsecond' AS run_every, r.next_run_at,
       last.id AS last_task_id, last.recurring_slot AS last_slot, last.state AS last_state,
       last.attempts AS last_attempts, last.last_error
FROM task_processor.recurring_tasks AS r
LEFT JOIN LATERAL (
    SELECT t.id, t.recurring_slot, t.state, t.attempts, t.last_error
    FROM task_processor.tasks AS t
    WHERE t.recurring_identifier = r.identifier
    ORDER BY t.recurring_slot DESC
    LIMIT 1
) AS last ON true;
