"""The first release's name for :mod:`common.enqueue`, kept for code written against it.

What such code reached for is here: ``_own_connection().run(work)``, where ``work`` gets this
thread's queue connection (the shared peer benchmark opens the connection this way before it
times ``.delay()``). New code calls :func:`common.enqueue.on_own_connection`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from common import db
from common.enqueue import on_own_connection

T = TypeVar("T")


class _QueueConnection:
    def run(self, work: Callable[[db.Connection], T]) -> T:
        return on_own_connection(work)


def _own_connection() -> _QueueConnection:
    return _QueueConnection()
