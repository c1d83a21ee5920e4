"""``TaskRunMethod``, where the reference's users import it from."""

from common.tasks import TaskRunMethod

__all__ = ["TaskRunMethod"]
