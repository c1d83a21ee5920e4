"""The round-trip check: does the processor run a task that this API enqueues?

One probe is in flight at a time per API process: requests that arrive meanwhile wait for its
answer instead of enqueueing tasks of their own, so a burst of health checks (or a processor
that is down while a load balancer keeps asking) cannot pile up tasks.
"""

from __future__ import annotations

import logging
import threading
import time

from api.pool import ConnectionPool
from builtin_tasks import health
from common.logs import one_line

logger = logging.getLogger(__name__)

WORKING = "working"
_POLL_SECONDS = 0.05


class _Flight:
    """One probe in progress, shared by every request that asked during it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result = "the health probe ended without a result"


class RoundTripProbe:
    def __init__(self, pool: ConnectionPool, timeout_seconds: float) -> None:
        self.pool = pool
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._in_flight: _Flight | None = None

    def check(self) -> str:
        """``"working"``, or why the processor did not run the probe in time."""
        with self._lock:
            flight = self._in_flight
            leading = flight is None
            if flight is None:
                flight = self._in_flight = _Flight()
        if not leading:
            # The leader answers within its timeout plus its database calls (each bounded).
            waited = self.timeout_seconds + 4 * self.pool.connect_timeout
            if not flight.done.wait(waited):
                return f"the health probe is still running after {waited:g} s"
            return flight.result
        try:
            flight.result = self._probe()
        except Exception as error:
            flight.result = f"the health probe failed: {one_line(error)}"
        finally:
            with self._lock:
                self._in_flight = None
            flight.done.set()
        return flight.result

    def _probe(self) -> str:
        probe_id, task_id = self.pool.run(health.start_probe)
        try:
            deadline = time.monotonic() + self.timeout_seconds
            while not self.pool.run(lambda cursor: health.is_completed(cursor, probe_id)):
                if time.monotonic() >= deadline:
                    return (
                        f"the task processor did not run the health-check task (id "
                        f"{task_id}) within {self.timeout_seconds:g} s; check that "
                        f"run-task-processor is running on this database "
                        f"(check-health --all tells more)"
                    )
                time.sleep(_POLL_SECONDS)
            return WORKING
        finally:
            self._remove(probe_id, task_id)

    def _remove(self, probe_id: int, task_id: int) -> None:
        try:
            self.pool.run(lambda cursor: health.finish_probe(cursor, probe_id, task_id))
        except Exception as error:  # the next probe deletes rows abandoned this way
            logger.warning("could not delete health probe %s: %s", probe_id, error)
