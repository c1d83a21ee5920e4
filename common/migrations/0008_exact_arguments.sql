-- A task receives exactly what .delay() accepted. jsonb normalises what it stores: 1e20 comes
-- back as the integer 100000000000000000000, -0.0 as 0, and object keys in another order. The
-- type json keeps the text as written: the worker decodes it, and falls back to the jsonb
-- columns (still written, for queries and the admin commands) for rows written without it.
ALTER TABLE task_processor.tasks
    ADD COLUMN args_exact   json,
    ADD COLUMN kwargs_exact json;
ALTER TABLE task_processor.recurring_tasks
    ADD COLUMN args_exact   json,
    ADD COLUMN kwargs_exact json;
