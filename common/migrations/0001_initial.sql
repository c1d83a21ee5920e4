-- Queue, attempt history and heartbeats. Every time that more than one process compares is
-- written with the database clock (now()).

CREATE TABLE task_processor.tasks (
    id               bigserial   PRIMARY KEY,
    identifier       text        NOT NULL,
    args             jsonb       NOT NULL DEFAULT '[]',
    kwargs           jsonb       NOT NULL DEFAULT '{}',
    priority         smallint    NOT NULL DEFAULT 20,
    scheduled_for    timestamptz NOT NULL DEFAULT now(),
    state            text        NOT NULL DEFAULT 'waiting'
                     CHECK (state IN ('waiting', 'running', 'succeeded', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    timeout_ms       integer     NOT NULL DEFAULT 60000 CHECK (timeout_ms > 0),
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    last_error       text
);

-- Matches the claim query: WHERE state = 'waiting' ... ORDER BY priority, scheduled_for, id.
CREATE INDEX tasks_claim_idx ON task_processor.tasks (priority, scheduled_for, id)
    WHERE state = 'waiting';
-- Lease renewal, release and the expired-lease reaper.
CREATE INDEX tasks_lease_owner_idx ON task_processor.tasks (lease_owner)
    WHERE state = 'running';
CREATE INDEX tasks_lease_expiry_idx ON task_processor.tasks (lease_expires_at)
    WHERE state = 'running';
-- queue_size counts and retention.
CREATE INDEX tasks_waiting_identifier_idx ON task_processor.tasks (identifier)
    WHERE state = 'waiting';
CREATE INDEX tasks_finished_idx ON task_processor.tasks (state, finished_at)
    WHERE state IN ('succeeded', 'dead');

-- One row per attempt.
CREATE TABLE task_processor.runs (
    id          bigserial   PRIMARY KEY,
    task_id     bigint      NOT NULL REFERENCES task_processor.tasks (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    worker      text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    result      text        NOT NULL
                CHECK (result IN ('success', 'failure', 'backoff', 'timeout', 'worker_lost')),
    error       text
);
CREATE INDEX runs_task_idx ON task_processor.runs (task_id);

-- One row per processor start (its id is unique per start), written by the supervisor.
CREATE TABLE task_processor.processors (
    id              text        PRIMARY KEY,
    host            text        NOT NULL,
    pid             integer     NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_beat_at    timestamptz NOT NULL DEFAULT now(),
    num_workers     integer     NOT NULL,
    grace_period_ms integer     NOT NULL,
    state           text        NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'draining', 'stopped')),
    stopped_at      timestamptz
);
CREATE INDEX processors_host_idx ON task_processor.processors (host);

-- One row per worker slot, written by the worker itself (no foreign key: a worker must be able
-- to beat even while an operator cleans the processors table).
CREATE TABLE task_processor.workers (
    processor_id  text        NOT NULL,
    slot          integer     NOT NULL,
    pid           integer     NOT NULL,
    generation    integer     NOT NULL,
    state         text        NOT NULL CHECK (state IN ('booting', 'idle', 'busy')),
    task_id       bigint,
    task_deadline timestamptz,
    last_beat_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (processor_id, slot)
);

-- Wake idle workers when due tasks are committed (delivered at commit, once per transaction).
CREATE FUNCTION task_processor.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_tasks WHERE scheduled_for <= now()) THEN
        PERFORM pg_notify('task_processor', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_notify AFTER INSERT ON task_processor.tasks
    REFERENCING NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_processor.notify_new_tasks();
