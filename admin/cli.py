"""task-processor: the operator's command: migrate the schema, inspect, requeue and cancel tasks.

Exit status: 0 on success, 1 when the work could not be done (database down, schema not
current, unknown or non-dead task), 78 for a configuration or usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg2

from admin import move_queue as moving
from admin import queries
from builtin_tasks import BUILTIN_TASK_MODULES
from common import control, db, embedded_postgres, migrations, move_queue, redaction, registry
from common.config import ConfigError, bounded_int, build_parser, exit_config_error, parse_args
from common.lifecycle import NO_TIME_LIMIT_MS
from common.logs import one_line
from common.tasks import TaskHandler
from common.unrunnable_sql import waiting_unrunnable

PROG = "task-processor"
STATES = ("waiting", "running", "succeeded", "dead", "cancelled")
TASK_ID = bounded_int(1, 2**63 - 1)  # a bigserial

Command = Callable[[argparse.Namespace], int]


class CommandFailed(Exception):
    """The command could not do its work; the message is its one line of output."""


def _age(seconds: float | None) -> str:
    """``1h 02m 03s``: an age an operator reads at a glance."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _time(value: datetime | None) -> str:
    return value.isoformat(sep=" ", timespec="seconds") if value else "-"


def _timeout(timeout_ms: int) -> str:
    return "none" if timeout_ms == NO_TIME_LIMIT_MS else str(timedelta(milliseconds=timeout_ms))


def _first_line(text: str | None, width: int = 60) -> str:
    line = (text or "").strip().splitlines()[-1:] or [""]
    return line[0] if len(line[0]) <= width else line[0][: width - 3] + "..."


def _connect(args: argparse.Namespace) -> db.Connection:
    url = db.queue_database_url(args.task_processor_database_url, args.database_url, args.data_dir)
    return db.connect(url, "admin")


def _query(args: argparse.Namespace, sql: str, params: Any = None) -> list[tuple]:
    """Run one inspection query after checking that the schema is there to query."""
    connection = _connect(args)
    try:
        migrations.check_current(connection)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    connection = _connect(args)
    try:
        applied = migrations.migrate(connection)
    finally:
        connection.close()
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        latest = migrations.available()[-1]
        print(f"schema is current (latest migration {latest.version:04d}_{latest.name})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    connection = _connect(args)
    try:
        migrations.check_current(connection)
        with connection.cursor() as cursor:
            cursor.execute(queries.STATE_COUNTS)
            counts = dict.fromkeys(STATES, 0) | dict(cursor.fetchall())
            cursor.execute(queries.WAITING_SUMMARY)
            due, scheduled, oldest = cursor.fetchone() or (0, 0, None)
            cursor.execute(queries.LIVE_PROCESSORS)
            processors = cursor.fetchall()
            unrunnable = waiting_unrunnable(cursor)
    finally:
        connection.close()
    oldest_seconds = float(oldest) if oldest is not None else None
    if args.json:
        print(
            json.dumps(
                {
                    "states": counts,
                    "waiting_due": due,
                    "waiting_scheduled": scheduled,
                    "oldest_due_seconds": oldest_seconds,
                    "processors": len(processors),
                    "waiting_unrunnable": {group.identifier: group.waiting for group in unrunnable},
                }
            )
        )
        return 0
    for state in STATES:
        print(f"{state:<10} {counts[state]}")
    print(
        f"waiting now {due}, scheduled later {scheduled}, oldest waiting for {_age(oldest_seconds)}"
    )
    for group in unrunnable:
        print(
            f"waiting for a processor that knows {group.identifier}: {group.waiting}, "
            f"oldest for {_age(group.oldest_seconds)} (no live processor registers it)"
        )
    print(f"processors {len(processors)}")
    for processor_id, host, pid, workers, state, beat in processors:
        print(
            f"  {processor_id} on {host} pid {pid}: {workers} workers, {state}, "
            f"last beat {_age(float(beat))} ago"
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = _query(
        args,
        queries.LIST_TASKS,
        {"state": args.state, "identifier": args.identifier, "limit": args.limit},
    )
    print(
        f"{'ID':>8}  {'STATE':<9}  {'TRIES':>5}  {'PRIO':>4}  {'SCHEDULED FOR':<25}  "
        f"IDENTIFIER / LAST ERROR"
    )
    for task_id, identifier, state, attempts, max_attempts, priority, scheduled, error in rows:
        tries = f"{attempts}/{max_attempts}"
        print(
            f"{task_id:>8}  {state:<9}  {tries:>5}  {priority:>4}  {_time(scheduled):<25}  "
            f"{identifier}" + (f"  ({_first_line(redaction.scrub(error))})" if error else "")
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    tasks = _query(args, queries.TASK, (args.id,))
    if not tasks:
        raise CommandFailed(f"no task {args.id}")
    (
        task_id,
        identifier,
        state,
        priority,
        attempts,
        max_attempts,
        timeout_ms,
        task_args,
        task_kwargs,
        created,
        scheduled,
        finished,
        lease_owner,
        lease_expires,
        error,
    ) = tasks[0]
    print(f"task {task_id}: {identifier}")
    print(f"  state        {state}")
    print(f"  attempts     {attempts} of {max_attempts}")
    print(f"  priority     {priority}")
    print(f"  timeout      {_timeout(timeout_ms)}")
    print(f"  args         {task_args}")  # as the database's text: never decoded here
    print(f"  kwargs       {task_kwargs}")
    print(f"  created      {_time(created)}")
    print(f"  scheduled    {_time(scheduled)}")
    print(f"  finished     {_time(finished)}")
    if lease_owner:
        print(f"  lease        {lease_owner} until {_time(lease_expires)}")
    if error:
        print("  last error")
        print("    " + redaction.scrub(error).rstrip().replace("\n", "\n    "))
    runs = _query(args, queries.TASK_RUNS, (task_id,))
    print(f"runs ({len(runs)})")
    for attempt, worker, started, ended, result, run_error in runs:
        print(f"  #{attempt} {result:<11} {_time(started)} -> {_time(ended)} on {worker}")
        if run_error:
            print("    " + redaction.scrub(run_error).rstrip().replace("\n", "\n    "))
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    if bool(args.ids) == args.dead:
        exit_config_error(PROG, "requeue needs task ids or --dead (not both)")
    if args.identifier and not args.dead:
        exit_config_error(PROG, "requeue: --identifier goes with --dead")
    ids = args.ids or None
    requeued = [
        row[0]
        for row in _query(args, queries.REQUEUE_DEAD, {"ids": ids, "identifier": args.identifier})
    ]
    print(
        f"requeued {len(requeued)} dead task{'s' if len(requeued) != 1 else ''}"
        + (f": {', '.join(map(str, sorted(requeued)))}" if ids and requeued else "")
    )
    if ids is None:
        return 0
    missed = sorted(set(ids) - set(requeued))
    if not missed:
        return 0
    states = dict(_query(args, queries.STATES_OF, (missed,)))
    for task_id in missed:
        state = states.get(task_id)
        reason = f"is {state}, not dead" if state else "does not exist"
        print(f"task {task_id} {reason}: left as it is", file=sys.stderr)
    return 1


def cmd_move_queue(args: argparse.Namespace) -> int:
    source = args.database_url
    target = db.queue_database_url(args.task_processor_database_url, args.database_url)
    if move_queue.other_queue(source, target) is None:
        raise CommandFailed(
            "move-queue moves the waiting tasks of DATABASE_URL's queue into "
            "TASK_PROCESSOR_DATABASE_URL's: set both, to different databases"
        )
    found = move_queue.left_behind(source)
    if found is None:
        print(f"{db.describe(source)} has no task_processor schema: nothing to move")
        return 0
    moved = moving.move_waiting(source, target)
    print(
        f"moved {moved} waiting task{'s' if moved != 1 else ''} from {db.describe(source)} "
        f"to {db.describe(target)}"
    )
    rest = move_queue.left_behind(source)
    if rest is not None and rest.running:
        print(
            f"{rest.running} tasks still run there (leased by processors on that database); "
            f"run move-queue again once they have finished",
            file=sys.stderr,
        )
        return 1
    if rest is not None and rest.dead:
        print(
            f"{rest.dead} dead tasks stay there; to move them, requeue them there first "
            f"(task-processor --task-processor-database-url OLD_URL requeue --dead)"
        )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    connection = _connect(args)
    try:
        migrations.check_current(connection)
        with connection.cursor() as cursor:
            cancelled = control.cancel(cursor, args.ids)
            missed = sorted(set(args.ids) - set(cancelled))
            cursor.execute(queries.STATES_OF, (missed,))
            states = dict(cursor.fetchall())
    finally:
        connection.close()
    print(
        f"cancelled {len(cancelled)} waiting task{'s' if len(cancelled) != 1 else ''}"
        + (f": {', '.join(map(str, cancelled))}" if cancelled else "")
    )
    for task_id in missed:
        state = states.get(task_id)
        reason = f"is {state}, not waiting" if state else "does not exist"
        print(f"task {task_id} {reason}: left as it is", file=sys.stderr)
    return 1 if missed else 0


def cmd_tasks(args: argparse.Namespace) -> int:
    registry.load_modules([*BUILTIN_TASK_MODULES, *(args.tasks or [])])
    handlers = [
        handler
        for identifier in registry.identifiers()
        if isinstance(handler := registry.get(identifier), TaskHandler)
    ]
    if not handlers:
        raise CommandFailed(
            "no tasks registered; name the module that defines them with --tasks MODULE"
        )
    print(f"{'IDENTIFIER':<40} {'PRIORITY':>8} {'TIMEOUT':>10} {'ATTEMPTS':>8} QUEUE SIZE")
    for handler in handlers:
        print(
            f"{handler.identifier:<40} {handler.priority:>8} "
            f"{handler.timeout or 'none'!s:>10} {handler.max_attempts:>8} "
            f"{handler.queue_size or '-'}"
        )
    return 0


def cmd_embedded(args: argparse.Namespace) -> int:
    """The embedded server of --data-dir, whatever database URL is configured."""
    directory = embedded_postgres.data_dir(args.data_dir)
    if args.action == "start":
        print(embedded_postgres.ensure_running(directory).url)
        return 0
    if args.action == "stop":
        stopped = embedded_postgres.stop(directory)
        print(f"{'stopped' if stopped else 'nothing to stop:'} the embedded server of {directory}")
        return 0
    server = embedded_postgres.find_running(directory)
    if server is None:
        print(f"the embedded server of {directory} is not running")
        return 1
    print(f"the embedded server of {directory} is running (pid {server.pid}): {server.url}")
    return 0


def build() -> argparse.ArgumentParser:
    """The parser: the database options of common.config and ``--tasks`` (for ``tasks``),
    then one subcommand."""
    parser = build_parser(
        PROG, __doc__, ["database_url", "task_processor_database_url", "data_dir", "tasks"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, run: Command, help_: str, aliases: Sequence[str] = ()):
        sub = commands.add_parser(name, help=help_, description=help_, aliases=list(aliases))
        sub.set_defaults(run=run)
        return sub

    add("migrate", cmd_migrate, "apply pending schema migrations")
    status = add(
        "status", cmd_status, "task counts per state and the oldest waiting task", aliases=["stats"]
    )
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    listing = add("list", cmd_list, "the latest tasks, newest first")
    listing.add_argument("--state", choices=STATES, help="only tasks in this state")
    listing.add_argument("--identifier", help="only tasks of this task identifier")
    listing.add_argument(
        "--limit", type=bounded_int(1, 100_000), default=50, help="at most N (default 50)"
    )
    show = add("show", cmd_show, "one task with its runs and errors")
    show.add_argument("id", type=TASK_ID, help="task id")
    requeue = add(
        "requeue", cmd_requeue, "dead tasks back to waiting, due now, with a fresh attempt budget"
    )
    requeue.add_argument("ids", type=TASK_ID, nargs="*", metavar="ID", help="task ids")
    requeue.add_argument("--dead", action="store_true", help="every dead task")
    requeue.add_argument("--identifier", help="with --dead: only tasks of this identifier")
    add(
        "move-queue",
        cmd_move_queue,
        "move the waiting tasks of DATABASE_URL's queue into TASK_PROCESSOR_DATABASE_URL's",
    )
    cancel = add("cancel", cmd_cancel, "waiting tasks to cancelled: they will not run")
    cancel.add_argument("ids", type=TASK_ID, nargs="+", metavar="ID", help="task ids")
    tasks = add("tasks", cmd_tasks, "the task identifiers that the given modules register")
    tasks.add_argument(
        "--tasks",
        action="append",
        metavar="MODULE",
        default=argparse.SUPPRESS,
        help="module that defines tasks; repeat for several",
    )
    embedded = add(
        "embedded",
        cmd_embedded,
        "the embedded PostgreSQL server of --data-dir: start it and print its URL, "
        "stop it, or say whether it runs (exit 1 when not)",
    )
    embedded.add_argument("action", choices=("start", "stop", "status"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build(), argv)
    try:
        return args.run(args)
    except (ConfigError, registry.TaskModuleError, db.DatabaseRefused) as error:
        exit_config_error(PROG, str(error))
    except (CommandFailed, db.DatabaseUnavailable, migrations.SchemaOutdated) as error:
        print(redaction.scrub(f"{PROG}: {error}"), file=sys.stderr)
    except psycopg2.Error as error:
        print(redaction.scrub(f"{PROG}: database error: {one_line(error)}"), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
