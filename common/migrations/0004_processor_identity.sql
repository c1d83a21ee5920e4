-- Which processors share this host's process table: the kernel's boot id and the PID
-- namespace, not the host name (containers with host networking share a host name, not their
-- pids). With the process's own start time in clock ticks since boot, a supervisor can tell for certain that a processor
-- registered on its host is gone, and requeue its tasks at once.
ALTER TABLE task_processor.processors
    ADD COLUMN host_key        text,
    ADD COLUMN process_start_ticks bigint;  -- clock ticks since boot (/proc/<pid>/stat)
CREATE INDEX processors_host_key_idx ON task_processor.processors (host_key)
    WHERE state <> 'stopped';
