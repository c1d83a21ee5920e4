"""Deliberate bugs in the core paths, and the tests that must catch each one.

Run on demand (not in CI), from a checkout:

    python3 bench/mutants.py            # every mutant
    python3 bench/mutants.py --list     # the table
    python3 bench/mutants.py finish-fence no-jitter   # some of them

Each mutant is applied alone to a temporary copy of the checkout (the working tree is never
touched), the tests named for it run there (``pytest -x``, the copy first on PYTHONPATH), and the
mutant is *caught* when they fail, *survived* when they pass. A mutant whose text is no longer
found exactly once in its file is *stale*: the code moved and the table needs updating. The exit
status is 1 if any mutant survived or is stale.

When a change touches a core path, add the bug it could most plausibly bring here, with the
test that pins the behaviour down.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Where each concern lives. The layout is being reorganised: update the paths here, once.
WORKER_SQL = "worker/queries.py"
PREPARED = "common/prepared.py"
SUPERVISOR_SQL = "supervisor/queries.py"
SUPERVISOR_DATABASE = "supervisor/database.py"
ARBITER = "supervisor/arbiter.py"
WORKER = "worker/process.py"
RUNNER = "worker/runner.py"
HEARTBEAT_SLOTS = "worker/heartbeat.py"
LIFECYCLE = "common/lifecycle.py"
CONTROL = "common/control.py"
API_APP = "api/app.py"
LOGS = "common/logs.py"
LISTENER = "supervisor/listener.py"

# And where the tests that catch them live.
CORE_RULES = "tests/system/test_core_rules.py"
CORE_PROCESSES = "tests/system/test_core_processes.py"
API_TOKEN = "tests/system/test_api_token.py"
RECOVERY = "tests/system/test_processor_recovery.py"
PROCESSOR_PATHS = "tests/system/test_processor_paths.py"
OUTAGE = "tests/system/test_outage_start_stop.py"
UNIT = "tests/unit"
ROLLING_DEPLOY = "tests/system/test_rolling_deploy.py"
EXACT_ARGUMENTS = "tests/system/test_exact_arguments.py"
RELIABILITY = "tests/system/test_reliability.py"
CANCEL = "tests/system/test_cancel.py"
PGBOUNCER = "tests/system/test_pgbouncer.py"
PREPARED_PLANS = "tests/system/test_prepared_plans.py"
STATISTICS = "tests/system/test_statistics.py"
WAKEUPS = "tests/system/test_processor_wakeups.py"
LIBPQ = "tests/system/test_libpq.py"


def at(path: str, test: str) -> str:
    """The pytest id of ``test`` in ``path``."""
    return f"{path}::{test}"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTANTS = (
    Mutant(
        "claim-waits-on-locks",
        WORKER_SQL,
        "    FOR UPDATE SKIP LOCKED\n), claimed AS",
        "    FOR UPDATE\n), claimed AS",
        (at(CORE_RULES, "test_a_second_claimer_skips_the_rows_a_first_holds_instead_of_waiting"),),
        "concurrent claimers never wait on each other",
    ),
    Mutant(
        "finish-fence",
        WORKER_SQL,
        "WHERE t.id = r.task_id AND t.lease_owner = %(owner)s AND t.state = 'running'",
        "WHERE t.id = r.task_id AND t.state = 'running'",
        (at(CORE_RULES, "test_a_worker_whose_lease_was_taken_changes_nothing"),),
        "a worker that lost its lease changes nothing",
    ),
    Mutant(
        "priority-descending",
        WORKER_SQL,
        "    ORDER BY priority, scheduled_for, id\n    LIMIT",
        "    ORDER BY priority DESC, scheduled_for, id\n    LIMIT",
        (at(CORE_RULES, "test_lower_priority_numbers_are_claimed_first"),),
        "lower priority numbers run first",
    ),
    Mutant(
        "claim-ignores-due-time",
        WORKER_SQL,
        "WHERE state = 'waiting' AND scheduled_for <= now() AND identifier",
        "WHERE state = 'waiting' AND identifier",
        (at(CORE_RULES, "test_a_delayed_task_is_never_claimed_before_it_is_due"),),
        "a delayed task never starts before it is due",
    ),
    Mutant(
        "token-prefix",
        API_APP,
        '            expected.encode("utf-8"),\n',
        '            expected.encode("utf-8")[: len(token.strip())],\n',
        (API_TOKEN,),
        "only the exact token opens monitoring (not a prefix)",
    ),
    Mutant(
        "token-empty",
        API_APP,
        'if scheme.lower() != "bearer" or not hmac.compare_digest(',
        'if scheme.lower() != "bearer" or token.strip() and not hmac.compare_digest(',
        (API_TOKEN,),
        "only the exact token opens monitoring (not an empty one)",
    ),
    Mutant(
        "no-jitter",
        LIFECYCLE,
        "* (0.5 + random() / 2) * interval '1 second'",
        "* interval '1 second'",
        (at(CORE_RULES, "test_a_burst_of_failures_does_not_retry_in_lockstep"),),
        "a burst of failures does not retry in lockstep",
    ),
    Mutant(
        "dead-worker-charges-unstarted",
        SUPERVISOR_SQL,
        "    SET {GIVE_BACK_UNSTARTED}\n    WHERE lease_owner = %(owner)s AND state = 'running' "
        "AND id <> %(task_id)s",
        "    SET state = 'waiting', lease_owner = NULL, lease_expires_at = NULL\n"
        "    WHERE lease_owner = %(owner)s AND state = 'running' AND id <> %(task_id)s",
        (at(CORE_RULES, "test_a_dead_workers_unstarted_tasks_go_back_without_an_attempt"),),
        "tasks a dead worker never started go back without an attempt",
    ),
    Mutant(
        "give-back-keeps-attempt",
        WORKER_SQL,
        "    SET {GIVE_BACK_UNSTARTED}\n    WHERE lease_owner = %(owner)s AND state = 'running' "
        "AND id = ANY",
        "    SET state = 'waiting', lease_owner = NULL, lease_expires_at = NULL\n"
        "    WHERE lease_owner = %(owner)s AND state = 'running' AND id = ANY",
        (at(CORE_RULES, "test_given_back_tasks_keep_no_attempt"),),
        "tasks given back go back without an attempt",
    ),
    Mutant(
        "grace-period-times-ten",
        ARBITER,
        "    if now - last > grace:",
        "    if now - last > grace * 10:",
        (f"{UNIT}/test_stuck_workers.py",),
        "the grace period is what --graceperiodms says",
    ),
    Mutant(
        "leases-never-renewed",
        SUPERVISOR_SQL,
        "WHERE state = 'running' AND lease_owner = ANY(%(own_owners)s)\n"
        "                 FOR UPDATE SKIP LOCKED)",
        "WHERE false AND lease_owner = ANY(%(own_owners)s)\n"
        "                 FOR UPDATE SKIP LOCKED)",
        (at(CORE_PROCESSES, "test_a_long_task_keeps_its_lease_while_its_processor_lives"),),
        "a long task keeps its lease while its processor lives",
    ),
    Mutant(
        "recycled-one-task-late",
        WORKER,
        "self.tasks_done >= self.settings.max_tasks",
        "self.tasks_done > self.settings.max_tasks",
        (at(CORE_PROCESSES, "test_a_worker_is_recycled_after_exactly_max_tasks"),),
        "--max-tasks-per-worker is exact",
    ),
    Mutant(
        "delay-until-dropped-by-runner",
        RUNNER,
        "        retry_at = backoff.delay_until\n",
        "        retry_at = None\n",
        (f"{UNIT}/test_runner.py",),
        "a backed-off task waits until the time it asked for",
    ),
    Mutant(
        "delay-until-ignored-by-finish",
        WORKER_SQL,
        "            WHEN r.retry_at IS NOT NULL THEN r.retry_at\n",
        "",
        (at(CORE_RULES, "test_a_backed_off_task_waits_until_the_time_it_asked_for"),),
        "a backed-off task waits until the time it asked for",
    ),
    Mutant(
        "timeout-retried-at-once",
        SUPERVISOR_DATABASE,
        '"backoff": release.result in (RunResult.TIMEOUT, RunResult.FAILURE),',
        '"backoff": release.result == RunResult.FAILURE,',
        (at(CORE_PROCESSES, "test_a_timed_out_task_backs_off_before_its_retry"),),
        "timeouts back off like failures",
    ),
    Mutant(
        "timeout-backoff-ignored-by-release",
        SUPERVISOR_SQL,
        "CASE WHEN %(backoff)s THEN now()",
        "CASE WHEN false THEN now()",
        (at(CORE_RULES, "test_a_timed_out_task_backs_off_and_a_lost_one_retries_at_once"),),
        "timeouts back off like failures",
    ),
    Mutant(
        "own-expired-leases-requeued",
        SUPERVISOR_SQL,
        "      AND NOT (lease_owner = ANY(%(own_owners)s))\n",
        "",
        (at(CORE_RULES, "test_expired_leases_of_a_live_processors_own_workers_are_not_requeued"),),
        "a live processor's workers are never robbed",
    ),
    Mutant(
        "seqlock-reads-odd-sequence",
        HEARTBEAT_SLOTS,
        "            if before % 2 == 0:",
        "            if True:",
        (f"{UNIT}/test_heartbeat_slots.py",),
        "a half-written heartbeat slot is never read",
    ),
    Mutant(
        "seqlock-ignores-a-change",
        HEARTBEAT_SLOTS,
        "                if before == after:",
        "                if True:",
        (f"{UNIT}/test_heartbeat_slots.py",),
        "a slot rewritten during a read is read again",
    ),
    # Beyond the table: other plausible slips in the same paths.
    Mutant(
        "backoff-cap-as-a-floor",
        LIFECYCLE,
        "least({RETRY_BACKOFF_SECONDS} * power(2, attempts - 1), ",
        "greatest({RETRY_BACKOFF_SECONDS} * power(2, attempts - 1), ",
        (
            at(
                CORE_RULES,
                "test_a_retry_waits_the_capped_exponential_backoff_scaled_by_half_to_one",
            ),
        ),
        "retries wait at most the cap",
    ),
    Mutant(
        "backoff-exponent-off-by-one",
        LIFECYCLE,
        "power(2, attempts - 1)",
        "power(2, attempts)",
        (
            at(
                CORE_RULES,
                "test_a_retry_waits_the_capped_exponential_backoff_scaled_by_half_to_one",
            ),
        ),
        "the first retry waits the base backoff",
    ),
    Mutant(
        "dead-one-attempt-late",
        LIFECYCLE,
        'OUT_OF_ATTEMPTS = "attempts >= max_attempts"',
        'OUT_OF_ATTEMPTS = "attempts > max_attempts"',
        (at(CORE_RULES, "test_a_failure_on_the_last_attempt_makes_the_task_dead_with_its_error"),),
        "a task is dead after max_attempts",
    ),
    Mutant(
        "orphans-keep-their-attempt",
        WORKER_SQL,
        "    SET {GIVE_BACK_UNSTARTED}\n    WHERE lease_owner = %(owner)s AND state = 'running'"
        "{{keep_recorded}}",
        "    SET state = 'waiting', lease_owner = NULL, lease_expires_at = NULL\n"
        "    WHERE lease_owner = %(owner)s AND state = 'running'{{keep_recorded}}",
        (at(CORE_RULES, "test_a_claim_gives_back_what_an_earlier_claim_of_the_same_worker_left"),),
        "a lost claim's tasks go back without an attempt",
    ),
    Mutant(
        "busy-deadline-plus-grace",
        ARBITER,
        "        if now > beat.deadline:",
        "        if now > beat.deadline + grace:",
        (f"{UNIT}/test_stuck_workers.py",),
        "a busy worker is stuck right after its task's deadline",
    ),
    Mutant(
        "unrecordable-outcome-not-replaced",
        WORKER,
        "replacement = outcome.unrecordable(error)",
        "replacement = outcome",
        (at(RECOVERY, "test_an_outcome_the_database_cannot_store_fails_that_task_alone"),),
        "an outcome the database cannot store fails that task alone",
    ),
    Mutant(
        "failing-duty-retried-every-turn",
        SUPERVISOR_DATABASE,
        "                    self.duties_paused_until = now + DUTY_PAUSE\n",
        "                    pass\n",
        (
            at(
                PROCESSOR_PATHS,
                "test_a_duty_that_raises_is_logged_and_paused_and_the_heartbeat_goes_on",
            ),
        ),
        "a periodic duty that raises is paused, not retried on every turn",
    ),
    Mutant(
        "json-log-not-json",
        LOGS,
        "        return json.dumps(redaction.scrub_data(entry))",
        "        return str(redaction.scrub_data(entry))",
        (
            at(
                PROCESSOR_PATHS,
                "test_the_json_log_format_is_one_object_per_line_from_every_process",
            ),
        ),
        "--log-format json writes one JSON object per line",
    ),
    Mutant(
        "stop-ignored-while-reconnecting",
        WORKER,
        "                if self.stopping:\n                    raise _StopRequested",
        "                if False:\n                    raise _StopRequested",
        (at(OUTAGE, "test_a_worker_asked_to_stop_while_the_database_is_down_leaves_at_once"),),
        "a worker asked to stop while the database is down leaves promptly",
    ),
    # In what the later work added: claiming only known tasks, exact arguments, the lease
    # fence, timeouts, forks, cancelling, prepared statements behind a pooler.
    Mutant(
        "claim-takes-unknown-identifiers",
        WORKER_SQL,
        " AND identifier = ANY(%(known)s::text[])",
        "",
        (at(ROLLING_DEPLOY, "test_old_and_new_processors_each_run_only_what_they_know"),),
        "a processor claims only the tasks it has registered",
    ),
    Mutant(
        "arguments-through-jsonb",
        WORKER_SQL,
        "coalesce(t.args_exact::text, t.args::text) AS args",
        "t.args::text AS args",
        (at(EXACT_ARGUMENTS, "test_the_processor_passes_every_json_type_unchanged"),),
        "a task receives exactly what .delay() accepted",
    ),
    Mutant(
        "fence-never-armed",
        WORKER,
        "        self._arm_fence()\n",
        "",
        (at(RELIABILITY, "test_a_paused_supervisor_never_lets_a_task_run_twice_at_once"),),
        "no attempt outlives its lease, whatever the supervisor does",
    ),
    Mutant(
        "late-end-not-a-timeout",
        RUNNER,
        "return outcome.overran(task.timeout_ms) if time.monotonic() > deadline else outcome",
        "return outcome",
        (at(RELIABILITY, "test_an_attempt_that_ends_past_its_deadline_is_a_timeout"),),
        "an attempt that ends past its deadline is a timeout",
    ),
    Mutant(
        "forked-child-returns-to-the-worker",
        RUNNER,
        "        if os.getpid() != worker_pid:\n",
        "        if False:\n",
        (at(RELIABILITY, "test_a_forked_child_of_a_task_never_runs_worker_code"),),
        "a child a task forks never runs worker code",
    ),
    Mutant(
        "cancel-takes-any-state",
        CONTROL,
        "WHERE id = ANY(%s::bigint[]) AND state = 'waiting'\nRETURNING id",
        "WHERE id = ANY(%s::bigint[])\nRETURNING id",
        (at(CANCEL, "test_cancel_command_cancels_waiting_tasks_and_names_the_others"),),
        "only a waiting task can be cancelled",
    ),
    Mutant(
        "prepared-statements-kept-behind-a-pooler",
        WORKER,
        "                self.prepared = False\n",
        "                raise\n",
        (at(PGBOUNCER, "test_prepared_statements_a_pooler_loses_fall_back_to_plain_text"),),
        "PgBouncer in transaction mode: plain statements once a prepared one is lost",
    ),
    Mutant(
        "claim-re-planned-at-every-call",
        PREPARED,
        'sql = sql.replace(f"%({key})s", str(int(value)))',
        "pass",
        (at(PREPARED_PLANS, "test_record_then_claim_settles_on_a_generic_plan"),),
        "the worker's statements are planned once per connection, not at every call",
    ),
    Mutant(
        "statistics-looked-at-only-twice-a-minute",
        ARBITER,
        "            if notified:\n                self.database.tasks_announced()\n",
        "",
        (at(STATISTICS, "test_a_backlog_that_lands_at_once_is_analysed"),),
        "a burst of new tasks is analysed within seconds, not at the next half-minute look",
    ),
    Mutant(
        "waiting-processor-never-asks-for-announcements",
        LISTENER,
        "            if self.awaiting is not True and self._write_awaiting(now, True):",
        "            if False:",
        (
            at(
                WAKEUPS,
                "test_a_busy_processor_is_not_told_of_new_tasks_and_misses_none_when_it_waits_again",
            ),
        ),
        "a processor whose worker waits is told of new tasks (NOTIFY) again",
    ),
    Mutant(
        "no-claim-after-asking-for-announcements",
        LISTENER,
        "                self.missed = True\n                self.recheck_at = now + RECHECK_AFTER",
        "                pass",
        (
            at(
                WAKEUPS,
                "test_the_listener_asks_for_announcements_while_a_worker_waits_and_claims_twice",
            ),
        ),
        "inserts that committed while the processor asked for announcements are claimed",
    ),
    Mutant(
        "announcements-to-stopped-processors",
        "common/migrations/0013_announce_to_waiting_processors.sql",
        "        WHERE state = 'running' AND awaits_tasks IS NOT FALSE\n",
        "        WHERE awaits_tasks IS NOT FALSE\n",
        (at(WAKEUPS, "test_an_insert_is_announced_only_while_a_live_processor_waits_for_tasks"),),
        "only a live processor that waits makes inserts pay for a NOTIFY",
    ),
    Mutant(
        "every-idle-worker-woken-per-token",
        "worker/wakeup.py",
        "select.EPOLLIN | select.EPOLLEXCLUSIVE",
        "select.EPOLLIN",
        (
            at(
                "tests/unit/test_wakeups.py",
                "test_each_token_wakes_one_waiting_worker_and_none_wakes_for_nothing",
            ),
        ),
        "a token wakes one waiting worker, not all of them",
    ),
    Mutant(
        "reload-keeps-the-old-poll-interval",
        LISTENER,
        "        self.sleep_interval = sleep_interval\n"
        "        self.statement_deadline = statement_deadline\n        if database_url ==",
        "        self.statement_deadline = statement_deadline\n        if database_url ==",
        (at(WAKEUPS, "test_a_reload_applies_a_new_sleep_interval_and_listening_url"),),
        "a reload reaches the supervisor's fallback poll, not only the workers",
    ),
    Mutant(
        "enqueue-needs-a-grant-on-processors",
        "common/migrations/0014_producers_read_waiting_processors.sql",
        "    ON task_processor.processors TO PUBLIC;",
        "    ON task_processor.processors TO pg_monitor;",
        (
            at(
                "tests/system/test_tasks_api.py",
                "test_a_role_granted_only_enqueueing_enqueues_and_announces_to_a_waiting_processor",
            ),
        ),
        "a role granted only what enqueueing needs can enqueue (the trigger reads processors)",
    ),
    Mutant(
        "libpq-refusal-taken-for-an-id",
        "common/libpq.py",
        '            raise psycopg2.OperationalError(reason.decode(errors="replace").strip())\n'
        "        return None\n",
        '            raise psycopg2.OperationalError(reason.decode(errors="replace").strip())\n'
        '        return "0"\n',
        (at(LIBPQ, "test_a_refusal_is_left_to_psycopg2_and_leaves_the_connection_fit_for_use"),),
        "a statement the server refused is never taken for an inserted task",
    ),
    Mutant(
        "libpq-broken-connection-sent-again",
        "common/libpq.py",
        "        if not result or _LIBPQ.status(pgconn) != _CONNECTION_OK:",
        "        if not result:",
        (at(LIBPQ, "test_a_connection_the_server_ended_raises_operational_error"),),
        "an insert on a connection that broke is not sent again (its commit may have happened)",
    ),
    Mutant(
        "libpq-nul-cuts-a-parameter-short",
        "common/libpq.py",
        '    if "\\x00" in text:',
        "    if False:",
        (at(LIBPQ, "test_a_nul_character_is_refused_not_cut_short"),),
        "a parameter is never cut short at a NUL character",
    ),
)


def _copy_checkout(destination: Path) -> None:
    """The files git knows of (committed or not), as they are in the working tree."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _run(mutant: Mutant, copy: Path) -> tuple[str, float]:
    """Apply ``mutant`` to ``copy``, run its tests, put the file back: (verdict, seconds)."""
    path = copy / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        return "stale", 0.0
    path.write_text(original.replace(mutant.old, mutant.new))
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", *mutant.tests, "-p", "no:cacheprovider"],
            cwd=copy,
            env={**os.environ, "PYTHONPATH": str(copy)},
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        path.write_text(original)
    seconds = time.monotonic() - started
    if result.returncode == 1:
        return "caught", seconds
    if result.returncode == 0:
        return "survived", seconds
    tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
    print("\n".join("      " + line for line in tail))
    return f"error (pytest exit {result.returncode})", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="only these mutants (default: all)")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    options = parser.parse_args(argv)
    unknown = set(options.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"no mutant named {', '.join(sorted(unknown))}; see --list")
    chosen = [m for m in MUTANTS if not options.names or m.name in options.names]
    if options.list:
        for mutant in chosen:
            print(f"{mutant.name:36} {mutant.path:24} {mutant.why}")
            for test in mutant.tests:
                print(f"{'':36} {test}")
        return 0
    bad = []
    with tempfile.TemporaryDirectory(prefix="tp-mutants-") as directory:
        copy = Path(directory)
        _copy_checkout(copy)
        for mutant in chosen:
            verdict, seconds = _run(mutant, copy)
            print(f"{verdict:9} {seconds:5.1f} s  {mutant.name:36} {mutant.why}", flush=True)
            if verdict != "caught":
                bad.append(mutant.name)
    print(
        f"\n{len(chosen) - len(bad)} of {len(chosen)} caught"
        + (f"; not caught: {', '.join(bad)}" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
