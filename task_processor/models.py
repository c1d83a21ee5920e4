"""``TaskPriority``, where the reference's users import it from (lower runs first; the
numbers differ from the reference's, the order of the names does not)."""

from common.tasks import TaskPriority

__all__ = ["TaskPriority"]
