-- New tasks are announced (NOTIFY) only while some processor waits for them. PostgreSQL
-- serialises the commits of every transaction that sent a NOTIFY (one lock, held through the
-- commit's flush), so announcing every insert caps the enqueue rate of all producers together
-- at one commit at a time, and costs a single producer a tenth of each .delay().
--
-- A processor's listener sets awaits_tasks while it has idle workers and clears it once they
-- have all been busy for a while (supervisor/listener.py); NULL is a processor of an earlier
-- release, which is told of every insert as before. A processor that stopped, or went silent
-- past its grace period, is told nothing.
ALTER TABLE task_processor.processors ADD COLUMN awaits_tasks boolean;

CREATE INDEX processors_awaiting_idx ON task_processor.processors (last_beat_at)
    WHERE state = 'running' AND awaits_tasks IS NOT FALSE;

CREATE OR REPLACE FUNCTION task_processor.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM task_processor.processors
        WHERE state = 'running' AND awaits_tasks IS NOT FALSE
          AND last_beat_at >= now() - make_interval(secs => grace_period_ms / 1000.0)
    ) THEN
        RETURN NULL;  -- nobody waits: the workers, all busy, claim again after their batch
    END IF;
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
