"""The task state rules are written once, in common/lifecycle.py, and every statement that
changes a task's state is built from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from admin import queries as admin_queries
from common import lifecycle
from supervisor import queries as supervisor_queries
from worker import queries as worker_queries

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("admin", "api", "builtin_tasks", "common", "health", "supervisor", "worker")


def test_lease_owners_are_unique_per_worker_start_and_share_their_processor_s_prefix():
    owner = lifecycle.lease_owner("host-1-abc", 3, 7)
    assert owner == "host-1-abc/3.7"
    assert owner.startswith(lifecycle.lease_owner_prefix("host-1-abc"))
    assert not lifecycle.lease_owner("host-1", 3, 7).startswith(
        lifecycle.lease_owner_prefix("host-1-abc")
    )


@pytest.mark.parametrize(
    "rule",
    [
        r"power\(2",  # the retry backoff
        r"attempts\s*-\s*1\b(?!\))",  # an attempt undone
        r"attempts\s*>=\s*(t\.)?max_attempts",  # out of attempts
        r"pg_notify\(",  # waking idle workers
    ],
)
def test_each_rule_is_written_only_in_the_lifecycle_module(rule):
    places = [
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if re.search(rule, path.read_text())
    ]
    assert places == ["common/lifecycle.py"]


@pytest.mark.parametrize(
    ("statement", "fragments"),
    [
        (worker_queries.CLAIM, [lifecycle.GIVE_BACK_UNSTARTED, lifecycle.WAKE]),
        (
            worker_queries.FINISH,
            [lifecycle.RETRY_DELAY, lifecycle.OUT_OF_ATTEMPTS, lifecycle.WAKE_SCHEDULED],
        ),
        (worker_queries.RELEASE_UNSTARTED, [lifecycle.GIVE_BACK_UNSTARTED, lifecycle.WAKE]),
        (supervisor_queries.RELEASE_WORKER, [lifecycle.RETRY_DELAY, lifecycle.WAITING_OR_DEAD]),
        (supervisor_queries.REQUEUE_EXPIRED.as_string(None), [lifecycle.WAITING_OR_DEAD]),
        (admin_queries.REQUEUE_DEAD, [lifecycle.REVIVE, lifecycle.WAKE]),
    ],
)
def test_state_changes_are_built_from_the_rules(statement, fragments):
    for fragment in fragments:
        assert fragment in statement
