"""The rules of claiming, recording and giving back, pinned down statement by statement.

Each test runs the worker's and the supervisor's own SQL against the real database, often from
two connections at once, so that a change to one of these statements that breaks a promise of
the README (ordering, fencing, attempts, backoff) fails here and says which promise.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
from databases import fetch_all
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.lifecycle import MAX_RETRY_BACKOFF_SECONDS, RETRY_BACKOFF_SECONDS
from supervisor import queries as supervisor_queries
from worker import queries as worker_queries

PROCESSOR = "rules-processor"


def _connect(url: str, autocommit: bool = True):
    connection = psycopg2.connect(url)
    connection.autocommit = autocommit
    return connection


def _execute(conn, sql: str, params=()) -> None:
    with conn.cursor() as cursor:
        cursor.execute(sql, params)


def _insert(
    conn,
    count: int = 1,
    *,
    priority: int = 20,
    due_in: float = 0.0,
    attempts: int = 0,
    max_attempts: int = 3,
) -> list[int]:
    rows = fetch_all(
        conn,
        """
        INSERT INTO task_processor.tasks (identifier, priority, scheduled_for, attempts,
                                          max_attempts)
        SELECT 'rules.task', %s, now() + %s * interval '1 second', %s, %s
        FROM generate_series(1, %s)
        RETURNING id""",
        (priority, due_in, attempts, max_attempts, count),
    )
    return [row[0] for row in rows]


def _claim(connection, owner: str, limit: int = 10, slot: int = 0) -> list[int]:
    """The worker's claim, as ``owner``; the ids it claimed, in the order it returns them."""
    with connection.cursor() as cursor:
        cursor.execute(
            worker_queries.CLAIM,
            worker_queries.claim_parameters(
                limit=limit, owner=owner, lease_seconds=60, known=["rules.task"]
            ),
        )
        return [row[0] for row in cursor.fetchall() if row[0] is not None]


def _finish(
    connection,
    owner: str,
    ids: list[int],
    outcome: str = "success",
    retry_at: datetime | None = None,
) -> list[int]:
    """The worker's recording of one outcome for every task of ``ids``; the ids recorded."""
    now = datetime.now(UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            worker_queries.FINISH,
            {
                "ids": ids,
                "outcomes": [outcome] * len(ids),
                "errors": [None if outcome == "success" else "boom"] * len(ids),
                "started": [now] * len(ids),
                "finished": [now] * len(ids),
                "retry_at": [retry_at] * len(ids),
                "owner": owner,
            },
        )
        return [row[0] for row in cursor.fetchall()]


def _tasks(conn, ids: list[int]) -> dict[int, tuple]:
    """id -> (state, attempts, lease_owner, seconds until scheduled_for)."""
    rows = fetch_all(
        conn,
        """
        SELECT id, state, attempts, lease_owner,
               extract(epoch FROM scheduled_for - now())::float8
        FROM task_processor.tasks WHERE id = ANY(%s)""",
        (ids,),
    )
    return {row[0]: row[1:] for row in rows}


def _release_worker(conn, owner: str, task_id: int, result: str = "worker_lost") -> None:
    fetch_all(
        conn,
        supervisor_queries.RELEASE_WORKER,
        {
            "owner": owner,
            "task_id": task_id,
            "reason": "test",
            "result": result,
            "backoff": result == "timeout",
            "running_seconds": 0.0,
        },
    )


# -- claiming -----------------------------------------------------------------------------------


def test_a_second_claimer_skips_the_rows_a_first_holds_instead_of_waiting(database_url, conn):
    """Concurrent claimers never wait on each other: the README's SKIP LOCKED promise."""
    ids = _insert(conn, 2)
    first = _connect(database_url, autocommit=False)
    second = _connect(database_url)
    try:
        assert _claim(first, "first/0.1", limit=1) == [ids[0]]  # its transaction stays open
        with second.cursor() as cursor:
            cursor.execute("SET statement_timeout = '3s'")  # a wait on the lock fails the test
        assert _claim(second, "second/0.1", limit=10, slot=1) == [ids[1]]
    finally:
        first.rollback()
        first.close()
        second.close()


def test_lower_priority_numbers_are_claimed_first(conn):
    low = _insert(conn, 1, priority=100)
    normal = _insert(conn, 1, priority=20)
    high = _insert(conn, 1, priority=0)
    order = [_claim(conn, f"w/0.{n}", limit=1) for n in range(3)]
    assert order == [high, normal, low]


def test_a_delayed_task_is_never_claimed_before_it_is_due(conn):
    """Even when other tasks are due (so the due-task probe says there is work), and even
    when the delayed one would come first by priority."""
    delayed = _insert(conn, 1, priority=0, due_in=3600)
    due = _insert(conn, 2, priority=50)
    assert sorted(_claim(conn, "w/0.1", limit=10)) == sorted(due)
    assert _tasks(conn, delayed)[delayed[0]][0] == "waiting"


# -- recording: the fence -----------------------------------------------------------------------


def test_a_worker_whose_lease_was_taken_changes_nothing(conn):
    (task,) = _insert(conn, 1)
    assert _claim(conn, "slow/0.1") == [task]
    # Its processor was presumed dead: the lease expired, was requeued and claimed again.
    _execute(
        conn,
        "UPDATE task_processor.tasks SET lease_expires_at = now() - interval '1s' WHERE id = %s",
        (task,),
    )
    fetch_all(
        conn, supervisor_queries.REQUEUE_EXPIRED, {"own_owners": [], "reason": "its lease expired"}
    )
    assert _claim(conn, "fast/0.1") == [task]
    assert _finish(conn, "slow/0.1", [task], "failure") == []
    assert _tasks(conn, [task])[task][:3] == ("running", 2, "fast/0.1")
    assert fetch_all(
        conn, "SELECT result FROM task_processor.runs WHERE task_id = %s ORDER BY id", (task,)
    ) == [("worker_lost",)]  # the requeue's
    assert _finish(conn, "fast/0.1", [task]) == [task]
    assert _tasks(conn, [task])[task][0] == "succeeded"


# -- retries ------------------------------------------------------------------------------------


def test_a_burst_of_failures_does_not_retry_in_lockstep(conn):
    ids = _insert(conn, 30, attempts=7, max_attempts=10)  # the 8th attempt: a 128 s backoff
    assert sorted(_claim(conn, "w/0.1", limit=30)) == sorted(ids)
    _finish(conn, "w/0.1", ids, "failure")
    delays = [row[3] for row in _tasks(conn, ids).values()]
    assert all(63 <= delay <= 128 for delay in delays), delays  # 128 s scaled by 0.5 .. 1
    assert len({round(delay, 3) for delay in delays}) > 10, delays  # jitter spreads them


def test_a_backed_off_task_waits_until_the_time_it_asked_for(conn):
    (task,) = _insert(conn, 1)
    _claim(conn, "w/0.1")
    asked = datetime.now(UTC) + timedelta(hours=2)
    assert _finish(conn, "w/0.1", [task], "backoff", retry_at=asked) == [task]
    ((scheduled_for, state),) = fetch_all(
        conn, "SELECT scheduled_for, state FROM task_processor.tasks WHERE id = %s", (task,)
    )
    assert state == "waiting" and scheduled_for == asked


# -- giving back --------------------------------------------------------------------------------


def test_a_dead_workers_unstarted_tasks_go_back_without_an_attempt(conn):
    ids = _insert(conn, 3, max_attempts=1)
    claimed = _claim(conn, "dead/0.1", limit=3)
    running, *unstarted = claimed
    _release_worker(conn, "dead/0.1", running)
    tasks = _tasks(conn, ids)
    assert tasks[running][:2] == ("dead", 1)  # its one attempt was spent
    assert all(tasks[task_id][:2] == ("waiting", 0) for task_id in unstarted), tasks


def test_given_back_tasks_keep_no_attempt(conn):
    ids = _insert(conn, 3)
    _claim(conn, "w/0.1", limit=3)
    ((released,),) = fetch_all(
        conn, worker_queries.RELEASE_UNSTARTED, {"owner": "w/0.1", "ids": ids[1:]}
    )
    assert released == 2
    tasks = _tasks(conn, ids)
    assert tasks[ids[0]][:3] == ("running", 1, "w/0.1")
    assert [tasks[task_id][:3] for task_id in ids[1:]] == [("waiting", 0, None)] * 2


def test_a_timed_out_task_backs_off_and_a_lost_one_retries_at_once(conn):
    timed_out = _insert(conn, 1, attempts=7, max_attempts=10)  # the 8th attempt: 128 s
    lost = _insert(conn, 1, attempts=7, max_attempts=10)
    _claim(conn, "a/0.1", limit=1)
    _claim(conn, "b/0.1", limit=1)
    _release_worker(conn, "a/0.1", timed_out[0], result="timeout")
    _release_worker(conn, "b/0.1", lost[0], result="worker_lost")
    assert 63 <= _tasks(conn, timed_out)[timed_out[0]][3] <= 128
    assert _tasks(conn, lost)[lost[0]][3] <= 0


def test_expired_leases_of_a_live_processors_own_workers_are_not_requeued(conn):
    mine, theirs = _insert(conn, 1), _insert(conn, 1)
    _claim(conn, "me/0.1", limit=1)
    _claim(conn, "gone/0.1", limit=1)
    _execute(conn, "UPDATE task_processor.tasks SET lease_expires_at = now() - interval '1s'")
    ((requeued,),) = fetch_all(
        conn,
        supervisor_queries.REQUEUE_EXPIRED,
        {"own_owners": ["me/0.1"], "reason": "its lease expired"},
    )
    assert requeued == 1
    assert _tasks(conn, mine)[mine[0]][:3] == ("running", 1, "me/0.1")
    assert _tasks(conn, theirs)[theirs[0]][0] == "waiting"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(attempt=st.integers(min_value=1, max_value=30))
def test_a_retry_waits_the_capped_exponential_backoff_scaled_by_half_to_one(database_url, attempt):
    connection = _connect(database_url, autocommit=False)
    try:
        with connection:
            (task,) = _insert(connection, 1, attempts=attempt - 1, max_attempts=attempt + 1)
            assert _claim(connection, "w/0.1", limit=1) == [task]
            _finish(connection, "w/0.1", [task], "failure")
            # One transaction: now() is the same instant the retry was scheduled from.
            ((state, delay),) = fetch_all(
                connection,
                """
                SELECT state, extract(epoch FROM scheduled_for - now())::float8
                FROM task_processor.tasks WHERE id = %s""",
                (task,),
            )
            connection.rollback()
    finally:
        connection.close()
    full = min(RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_RETRY_BACKOFF_SECONDS)
    assert state == "waiting"
    assert 0.5 * full - 1e-3 <= delay <= full + 1e-3, (delay, full)


# -- the last attempt, and claims whose answer was lost ----------------------------------------


def test_a_failure_on_the_last_attempt_makes_the_task_dead_with_its_error(conn):
    last, earlier = _insert(conn, 1, attempts=2, max_attempts=3), _insert(conn, 1, max_attempts=3)
    _claim(conn, "w/0.1", limit=2)
    _finish(conn, "w/0.1", last + earlier, "failure")
    (dead,) = fetch_all(
        conn,
        "SELECT state, attempts, last_error, finished_at IS NOT NULL "
        "FROM task_processor.tasks WHERE id = %s",
        (last[0],),
    )
    assert dead == ("dead", 3, "boom", True)
    assert _tasks(conn, earlier)[earlier[0]][:2] == ("waiting", 1)


def test_a_claim_gives_back_what_an_earlier_claim_of_the_same_worker_left(conn):
    """A worker claims only when it holds nothing: what is still leased to it comes from a
    claim whose answer it never got, and goes back without an attempt."""
    ids = _insert(conn, 2)
    assert sorted(_claim(conn, "w/0.1", limit=2)) == sorted(ids)  # the answer "was lost"
    assert _claim(conn, "w/0.1", limit=2) == []  # its own statement's snapshot: not again
    assert [task[:3] for task in _tasks(conn, ids).values()] == [("waiting", 0, None)] * 2
