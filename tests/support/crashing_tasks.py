"""A task module whose workers die as soon as they are forked: a crash loop."""

import os

from common.tasks import register_task_handler

os.register_at_fork(after_in_child=lambda: os._exit(3))


@register_task_handler(task_name="crashing_tasks.never_runs")
def never_runs() -> None:
    """A task, so that the module is accepted: its workers die before they claim anything."""
