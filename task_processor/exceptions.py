"""The exceptions, where the reference's users import them from."""

from common.errors import (
    InvalidArgumentsError,
    TaskBackoffError,
    TaskProcessingError,
    TaskQueueFullError,
)

__all__ = ["InvalidArgumentsError", "TaskBackoffError", "TaskProcessingError", "TaskQueueFullError"]
