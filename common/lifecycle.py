"""How a task changes state: the rules, each written once, that every statement composes.

A task is *waiting* until a worker claims it (*running*, under a lease); an attempt ends it
*succeeded*, or sends it back to *waiting* with a retry time, or makes it *dead* once it is out
of attempts; an operator may cancel a waiting task (*cancelled*) or requeue a dead one. The
worker, the supervisor, the admin command and the dashboard all change states with statements
built from the fragments below, so that a change of the retry policy, of what "out of
attempts" means or of how idle workers are woken is one edit here.

The fragments are unqualified column expressions of ``task_processor.tasks``: they can stand
in the ``SET`` and ``WHERE`` clauses of any ``UPDATE`` of that table whose ``FROM`` list
brings no column of the same name.
"""

from __future__ import annotations

import enum


class TaskState(enum.StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"  # by an operator, while it waited: it will not run


class RunResult(enum.StrEnum):
    """How one attempt ended: a row of ``task_processor.runs``."""

    SUCCESS = "success"
    FAILURE = "failure"
    BACKOFF = "backoff"  # the task raised TaskBackoffError
    TIMEOUT = "timeout"  # killed past its deadline
    WORKER_LOST = "worker_lost"  # its worker or processor died, or was stopped


# A failed attempt's retry comes after min(BASE * 2^(attempt - 1), CAP) seconds, scaled by a
# random factor between 0.5 and 1 so that a burst of failures does not retry in lockstep.
RETRY_BACKOFF_SECONDS = 1.0
MAX_RETRY_BACKOFF_SECONDS = 600.0

NOTIFY_CHANNEL = "task_processor"
LISTEN = f"LISTEN {NOTIFY_CHANNEL}"
# Idle workers claim at once; with the payload 'scheduled' they learn of a new due time.
WAKE = f"pg_notify('{NOTIFY_CHANNEL}', '')"
WAKE_SCHEDULED = f"pg_notify('{NOTIFY_CHANNEL}', 'scheduled')"


def lease_owner(processor_id: str, slot: int, generation: int) -> str:
    """The lease owner of one worker process: unique per process start."""
    return f"{lease_owner_prefix(processor_id)}{slot}.{generation}"


def lease_owner_prefix(processor_id: str) -> str:
    """What the lease owners of every worker of one processor start with."""
    return f"{processor_id}/"


# timeout=None: the task's row carries the largest timeout_ms, which no timedelta a task may
# have can give. A processor of this release runs such a task without a deadline; an older
# one would give it 24.8 days, as good as none, instead of failing on a NULL.
NO_TIME_LIMIT_MS = 2**31 - 1

OUT_OF_ATTEMPTS = "attempts >= max_attempts"

# The delay before the retry of the attempt just counted.
RETRY_DELAY = (
    f"least({RETRY_BACKOFF_SECONDS} * power(2, attempts - 1), "
    f"{MAX_RETRY_BACKOFF_SECONDS}) * (0.5 + random() / 2) * interval '1 second'"
)

# After an attempt that did not succeed: retried, or dead when it was the last.
WAITING_OR_DEAD = f"CASE WHEN {OUT_OF_ATTEMPTS} THEN 'dead' ELSE 'waiting' END"
FINISHED_IF_DEAD = f"CASE WHEN {OUT_OF_ATTEMPTS} THEN now() END"

# A claimed task that was never started goes back as it was: its attempt undone.
GIVE_BACK_UNSTARTED = (
    "state = 'waiting', attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL"
)

LEASE_FREED = "lease_owner = NULL, lease_expires_at = NULL"

# A waiting task cancelled by an operator: final, it will not run.
CANCEL = "state = 'cancelled', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL"

# A dead task requeued by an operator: due now, with a fresh budget of attempts. The last error
# stays for reference; the runs keep the history.
REVIVE = (
    "state = 'waiting', attempts = 0, scheduled_for = now(), finished_at = NULL, "
    "lease_owner = NULL, lease_expires_at = NULL"
)
