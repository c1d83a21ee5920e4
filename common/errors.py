"""The exceptions an application's code may catch, named as the reference names them.

``TaskProcessingError`` is the base of the errors about a task that cannot be enqueued or run
as asked; ``TaskBackoffError`` is not an error but a request from a task to run again later.
"""

from __future__ import annotations

from datetime import datetime


class TaskProcessingError(Exception):
    """A task cannot be enqueued or run as asked; the message says why and what to change."""


class InvalidArgumentsError(TaskProcessingError, TypeError):
    """A task's arguments cannot travel as JSON (or are too large). Raised by ``.delay()`` and
    by a direct call alike, so that code that works inline also works queued. A TypeError,
    as passing the wrong kind of argument is."""


class TaskQueueFullError(TaskProcessingError):
    """``queue_size`` tasks of this identifier already wait. ``.delay()`` logs it and returns
    None, as the reference does; ``.delay(raise_if_full=True)`` raises it instead."""

    def __init__(self, identifier: str, queue_size: int) -> None:
        super().__init__(
            f"queue of task {identifier} is full: {queue_size} tasks already "
            f"wait (queue_size={queue_size}); the task was not queued"
        )
        self.identifier = identifier
        self.queue_size = queue_size


class TaskBackoffError(Exception):
    """Raised by a task to be run again later: at ``delay_until``, or after the usual backoff.

    The attempt counts towards ``max_attempts``.
    """

    def __init__(self, delay_until: datetime | None = None) -> None:
        super().__init__(f"task asked to be retried at {delay_until or 'the next backoff'}")
        self.delay_until = delay_until
