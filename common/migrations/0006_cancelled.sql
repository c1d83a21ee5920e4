-- A final state for tasks cancelled before they ran (`task-processor cancel ID`,
-- common.tasks.cancel_task, the dashboard). Only a waiting task can be cancelled; it is kept,
-- like a succeeded one, until retention deletes it.
ALTER TABLE task_processor.tasks
    DROP CONSTRAINT tasks_state_check,
    ADD CONSTRAINT tasks_state_check
        CHECK (state IN ('waiting', 'running', 'succeeded', 'dead', 'cancelled'));

-- Retention finds cancelled tasks by the same index as the other finished ones.
DROP INDEX task_processor.tasks_finished_idx;
CREATE INDEX tasks_finished_idx ON task_processor.tasks (state, finished_at)
    WHERE state IN ('succeeded', 'dead', 'cancelled');

-- The dashboard's chart reads the last hour of attempts. Runs are appended in finishing order,
-- so a BRIN index finds that hour in a few pages at almost no cost to the writes.
CREATE INDEX runs_finished_brin_idx ON task_processor.runs USING brin (finished_at);
