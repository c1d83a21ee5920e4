-- Each worker's resident memory, written by the supervisor with the workers' rows (it reads
-- /proc/<pid>/statm of its own children), so that the dashboard shows which worker grows.
ALTER TABLE task_processor.workers ADD COLUMN rss_bytes bigint;
