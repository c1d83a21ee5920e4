"""The supervisor keeps the planner's statistics of the tasks table fresh: a backlog that lands
at once is analysed within seconds, so that claims walk the claim index instead of sorting the
whole backlog."""

from __future__ import annotations

import pytest
from harness import query, wait_for

pytestmark = pytest.mark.slow


def test_a_backlog_that_lands_at_once_is_analysed(database_url, start_processor):
    processor = start_processor("--numthreads", "1")
    processor.wait_ready(1)
    # Tasks no processor here knows: they stay waiting, as a backlog does for a moment.
    query(
        database_url,
        "INSERT INTO task_processor.tasks (identifier) "
        "SELECT 'another_release.task' FROM generate_series(1, 20000)",
    )
    # Within seconds of the notification, not at the next look (30 s after the start).
    wait_for(
        lambda: "analysed task_processor.tasks" in processor.log_text(),
        timeout=15,
        message="the supervisor to analyse the tasks table soon after the burst",
    )
    (analysed,) = query(
        database_url,
        "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables "
        "WHERE relid = 'task_processor.tasks'::regclass",
    )
    assert analysed == (True,)


def test_a_backlog_that_landed_before_the_start_is_analysed_at_once(database_url, start_processor):
    query(
        database_url,
        "INSERT INTO task_processor.tasks (identifier) "
        "SELECT 'another_release.task' FROM generate_series(1, 20000)",
    )
    processor = start_processor("--numthreads", "1")
    # At start, not a look (30 s) later: a backlog left by an outage is drained from the start.
    wait_for(
        lambda: "analysed task_processor.tasks" in processor.log_text(),
        timeout=15,
        message="the supervisor to analyse the tasks table at its start",
    )
