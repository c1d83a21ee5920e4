"""The worker's prepared statements are planned once per connection, not at every call: their
batch size is written into them, so PostgreSQL's generic plan is as cheap as a custom one and
is the one it keeps (planning the record-and-claim statement cost as much as running it)."""

from __future__ import annotations

from datetime import UTC, datetime

from databases import fetch_all

from common.prepared import Prepared
from worker import queries
from worker.runner import Outcome

KNOWN = ["plans.task"]


def test_a_literal_is_written_into_the_prepared_statement_and_not_into_the_plain_text():
    ten = Prepared("claim", queries.CLAIM, queries._CLAIM_TYPES, {"limit": 10})
    seven = Prepared("claim", queries.CLAIM, queries._CLAIM_TYPES, {"limit": 7})
    assert "LIMIT 10" in ten.prepare and "%(limit)s" not in ten.execute
    assert ten.plain == queries.CLAIM and "LIMIT %(limit)s" in ten.plain
    assert ten.name != seven.name  # a statement of that name is this very text


def test_record_then_claim_settles_on_a_generic_plan(conn):
    fetch_all(
        conn,
        "INSERT INTO task_processor.tasks (identifier) "
        "SELECT 'plans.task' FROM generate_series(1, 20000) RETURNING 1",
    )
    statements = queries.prepared(10)
    claim = queries.claim_parameters(limit=10, owner="p/0.1", lease_seconds=60, known=KNOWN)
    with conn.cursor() as cursor:
        cursor.execute("ANALYZE task_processor.tasks")
        for statement in statements:
            statement.prepare_on(cursor)
        cursor.execute(statements.claim.execute, claim)
        ids = [row[0] for row in cursor.fetchall()]
        for _ in range(12):
            now = datetime.now(UTC)
            outcomes = [Outcome(task_id, "success", None, now, now) for task_id in ids]
            cursor.execute(
                statements.record_then_claim.execute,
                {**queries.finish_parameters(outcomes, "p/0.1"), **claim},
            )
            rows = cursor.fetchall()
            assert sorted(rows[0][-1]) == sorted(ids)  # the batch before was recorded
            ids = [row[0] for row in rows]
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = %s",
            (statements.record_then_claim.name,),
        )
        generic, custom = cursor.fetchone()
    assert generic > custom
    succeeded = fetch_all(
        conn, "SELECT count(*) FROM task_processor.tasks WHERE state = 'succeeded'"
    )
    assert succeeded == [(120,)]
