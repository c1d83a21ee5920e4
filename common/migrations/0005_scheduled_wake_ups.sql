-- Delayed tasks start on time. An idle worker asks, with each claim, when the next delayed task
-- falls due (one probe of this index) and wakes for it then, instead of at its next fallback
-- poll. Inserting delayed tasks now also wakes idle workers (payload 'scheduled'), so that they
-- learn of the new due time at once.
CREATE INDEX tasks_scheduled_idx ON task_processor.tasks (scheduled_for)
    WHERE state = 'waiting';

CREATE OR REPLACE FUNCTION task_processor.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_tasks) THEN
        RETURN NULL;  -- an insert that added nothing (refused by queue_size, a lost race)
    END IF;
    IF EXISTS (SELECT 1 FROM new_tasks WHERE scheduled_for <= now()) THEN
        PERFORM pg_notify('task_processor', '');
    ELSE
        PERFORM pg_notify('task_processor', 'scheduled');
    END IF;
    RETURN NULL;
END
$$;
