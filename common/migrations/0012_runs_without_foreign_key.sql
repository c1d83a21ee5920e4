-- A task's attempts go with it, as before, but through one statement-level trigger instead of
-- the foreign key: the key ran two queries per attempt row, a key-share lock of the task row for
-- every attempt recorded (the attempt is inserted by the very statement that updates its task,
-- so the task is there by construction) and a delete of its runs for every task deleted (the
-- retention clean-up's bulk of work). The trigger deletes the attempts of all the tasks a
-- statement deleted in one query (runs_task_idx), and TRUNCATE of the tasks empties the runs
-- (by a DELETE: a TRUNCATE there fails when the runs were in the same TRUNCATE, and then the
-- DELETE finds nothing to do).
ALTER TABLE task_processor.runs DROP CONSTRAINT runs_task_id_fkey;

CREATE FUNCTION task_processor.delete_runs_of_deleted_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_processor.runs WHERE task_id IN (SELECT id FROM deleted_tasks);
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_delete_runs AFTER DELETE ON task_processor.tasks
    REFERENCING OLD TABLE AS deleted_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_processor.delete_runs_of_deleted_tasks();

CREATE FUNCTION task_processor.truncate_runs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_processor.runs;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_truncate_runs AFTER TRUNCATE ON task_processor.tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_processor.truncate_runs();
