-- A processor claims only the task identifiers it has registered, so that during a rolling
-- deploy an older processor leaves a newer release's tasks waiting instead of failing them.
--
-- The claim looks, for each identifier it knows, at the first due tasks in claim order, then
-- takes the best of those: one short range scan of this index per known identifier, however
-- many tasks of other identifiers wait ahead of them. Its leading column also serves the
-- queue_size counts (identifier = X AND state = 'waiting'), which the index it replaces did.
CREATE INDEX tasks_claim_known_idx
    ON task_processor.tasks (identifier, priority, scheduled_for, id)
    WHERE state = 'waiting';
DROP INDEX task_processor.tasks_waiting_identifier_idx;

-- The identifiers each processor start knows, written when it registers, so that the status
-- command, the monitoring endpoint and the processors themselves can tell tasks that nobody
-- live can run. NULL: a processor from before this migration, which claims every identifier.
ALTER TABLE task_processor.processors ADD COLUMN task_identifiers text[];
