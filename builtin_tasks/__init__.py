"""Tasks that every processor runs whatever its ``--tasks``: the API's health probe and the
retention clean-up. The processor imports each module named here at start."""

BUILTIN_TASK_MODULES: list[str] = ["builtin_tasks.health", "builtin_tasks.retention"]
