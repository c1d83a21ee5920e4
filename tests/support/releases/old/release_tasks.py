"""The older release of an application's task module, in this project's own interface: it
knows ``release_tasks.shared`` only. tests/test_rolling_deploy.py runs it beside the newer
release (releases/new), under the same module name, on one database."""

from __future__ import annotations

from datetime import timedelta

from processor_tasks import record_key

from common.tasks import register_task_handler


@register_task_handler(timeout=timedelta(seconds=30))
def shared(key: str) -> None:
    record_key(key)
