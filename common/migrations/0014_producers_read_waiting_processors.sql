-- The new-task trigger (0013) reads task_processor.processors to learn whether a processor
-- waits, and a trigger runs as the role that inserts. An application role allowed only to
-- enqueue (INSERT on tasks, SELECT on its id column, USAGE on its sequence) would have every
-- .delay() refused with "permission denied for table processors". Every role may now read the
-- four columns that check reads, and only those: whether each processor runs, whether it
-- waits, when it last beat and its grace period. None of them is a secret, and a grant costs
-- an insert nothing, where a SECURITY DEFINER trigger would switch roles and search paths at
-- every insert.
GRANT SELECT (state, awaits_tasks, last_beat_at, grace_period_ms)
    ON task_processor.processors TO PUBLIC;
