"""The shape of the supervisor's simple periodic checks: run every ``interval`` seconds, with
nothing to write at start (a :class:`supervisor.database.Duty`)."""

from __future__ import annotations

import time

from common import db


class PeriodicCheck:
    """Owned by the supervisor, in its single thread; subclasses say what :meth:`check` does."""

    interval = 60.0
    at_start = False  # also run the first check at once, not one interval after start

    def __init__(self) -> None:
        self._next_due = time.monotonic() + (0.0 if self.at_start else self.interval)
        self._last_run = float("-inf")

    def start(self, connection: db.Connection) -> None:
        """Nothing to write at start."""

    def next_due(self) -> float:
        return self._next_due

    def run(self, connection: db.Connection) -> None:
        self._last_run = time.monotonic()
        self._next_due = self._last_run + self.interval
        self.check(connection)

    def tasks_announced(self) -> None:
        """Nothing to do sooner, unless a subclass says otherwise."""

    def check(self, connection: db.Connection) -> None:
        raise NotImplementedError
