-- The queue's tables churn: every task is inserted, updated twice (claimed, then finished) and
-- deleted by retention, so dead row versions pile up at three per task. With the default
-- trigger (a fifth of the table) a backlog of a million tasks carries hundreds of thousands
-- of dead versions, which every claim's index scan steps over. Vacuum these tables after 1 %
-- of their rows changed instead, and the tasks table at full speed: it is read on every claim.
ALTER TABLE task_processor.tasks SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE task_processor.runs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);
