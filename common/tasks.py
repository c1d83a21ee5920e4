"""The public task API: declare tasks, then run them now, in a thread, or on the processor.

    @register_task_handler(priority=TaskPriority.HIGH, timeout=timedelta(seconds=60))
    def send_email(to: str) -> None: ...

    send_email.delay(args=("a@example.com",))    # the task id, or None

``TASK_RUN_METHOD`` decides what ``.delay()`` does: ``TASK_PROCESSOR`` writes a task row,
``SEPARATE_THREAD`` (the default) runs it in an unmanaged thread, ``SYNCHRONOUSLY`` runs it
inline. Inside the processor ``.delay()`` always writes a task row.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from typing import Any

from common import control, db, enqueue, recurring, registry
from common.config import ConfigError
from common.db import Connection
from common.errors import TaskBackoffError, TaskQueueFullError
from common.lifecycle import NO_TIME_LIMIT_MS
from common.serialization import serialize_arguments
from common.settings import processor_settings

logger = logging.getLogger(__name__)


class TaskPriority(enum.IntEnum):
    """Lower runs first, as in the reference."""

    HIGHEST = 0
    HIGH = 10
    NORMAL = 20
    LOW = 50
    LOWER = 75
    LOWEST = 100


class TaskRunMethod(enum.Enum):
    TASK_PROCESSOR = "TASK_PROCESSOR"
    SEPARATE_THREAD = "SEPARATE_THREAD"
    SYNCHRONOUSLY = "SYNCHRONOUSLY"


__all__ = [
    "TaskBackoffError",
    "TaskHandler",
    "TaskPriority",
    "TaskRunMethod",
    "register_recurring_task",
    "register_task_handler",
    "run_method",
]


def run_method() -> TaskRunMethod:
    """The effective run method; an unknown ``TASK_RUN_METHOD`` is a :class:`ConfigError`."""
    if processor_settings() is not None:
        return TaskRunMethod.TASK_PROCESSOR
    raw = os.environ.get("TASK_RUN_METHOD", TaskRunMethod.SEPARATE_THREAD.value)
    return _run_method_named(raw)


@functools.lru_cache(maxsize=8)
def _run_method_named(raw: str) -> TaskRunMethod:
    """The run method a ``TASK_RUN_METHOD`` value names (read at every ``.delay()``)."""
    try:
        return TaskRunMethod(raw.strip().upper())
    except ValueError:
        valid = ", ".join(method.value for method in TaskRunMethod)
        raise ConfigError(f"TASK_RUN_METHOD is {raw!r}; valid values are {valid}") from None


def _run_logged(
    function: Callable[..., Any], identifier: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    """Run a task in a thread that nobody joins: its exception must reach the log."""
    try:
        function(*args, **kwargs)
    except Exception:
        logger.exception("task %s failed in its thread", identifier)


_MAX_TIMEOUT = timedelta(days=24)  # fits timeout_ms, a 32-bit integer column of milliseconds
_MAX_ATTEMPTS = 1_000_000


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_settings(
    identifier: str, priority: Any, timeout: Any, max_attempts: Any, queue_size: Any
) -> None:
    """Refuse a bad setting at import time, where the mistake is, not when a task runs."""
    if not _is_int(priority) or not TaskPriority.HIGHEST <= priority <= TaskPriority.LOWEST:
        raise ValueError(
            f"{identifier}: priority must be a whole number from "
            f"{TaskPriority.HIGHEST:d} (runs first) to {TaskPriority.LOWEST:d}, "
            f"e.g. TaskPriority.HIGH; got {priority!r}"
        )
    if timeout is not None and (
        not isinstance(timeout, timedelta) or not timedelta(0) < timeout <= _MAX_TIMEOUT
    ):
        raise ValueError(
            f"{identifier}: timeout must be a timedelta above zero and at most "
            f"{_MAX_TIMEOUT}, e.g. timedelta(seconds=60), or None for no time "
            f"limit; got {timeout!r}"
        )
    if not _is_int(max_attempts) or not 1 <= max_attempts <= _MAX_ATTEMPTS:
        raise ValueError(
            f"{identifier}: max_attempts must be a whole number from 1 to "
            f"{_MAX_ATTEMPTS}; got {max_attempts!r}"
        )
    if queue_size is not None and (not _is_int(queue_size) or queue_size < 1):
        raise ValueError(
            f"{identifier}: queue_size must be None (no limit) or a whole number "
            f"of at least 1; got {queue_size!r}"
        )


def _after_commit(start: Callable[[], None]) -> None:
    """Call ``start`` once the application's current transaction commits.

    The only transaction this library can see is Django's: in an application that uses
    Django (already imported and configured), ``transaction.on_commit``, which calls at once
    outside an atomic block. Elsewhere no transaction is observable (psycopg2 has no commit
    hook), so ``start`` is called at once, as the reference does outside a transaction.
    """
    if "django" in sys.modules:
        from django.conf import settings

        if settings.configured and settings.DATABASES:
            from django.db import transaction

            transaction.on_commit(start)
            return
    start()


class TaskHandler:
    """A registered task: call it, ``.delay()`` it, or ``.run_in_thread()`` it."""

    def __init__(
        self,
        function: Callable[..., Any],
        identifier: str,
        priority: int,
        timeout: timedelta | None,
        max_attempts: int,
        queue_size: int | None,
        transaction_on_commit: bool = True,
    ) -> None:
        _check_settings(identifier, priority, timeout, max_attempts, queue_size)
        if not isinstance(transaction_on_commit, bool):
            raise ValueError(
                f"{identifier}: transaction_on_commit must be True or False; got "
                f"{transaction_on_commit!r}"
            )
        # First: it copies the function's own attributes onto the handler, and one of the
        # same name (a decorator's ``kind``, say) must not replace the handler's.
        functools.update_wrapper(self, function)
        self.function = function
        self.identifier = identifier
        self.transaction_on_commit = transaction_on_commit
        self._timeout = timeout
        # What every one of its tasks shares, fixed at registration (the settings below read
        # it): built once, not at each .delay().
        self.kind = enqueue.TaskKind(
            identifier=identifier,
            priority=int(priority),
            max_attempts=max_attempts,
            timeout_ms=(
                NO_TIME_LIMIT_MS if timeout is None else max(1, int(timeout.total_seconds() * 1000))
            ),
            queue_size=queue_size,
        )

    @property
    def task_identifier(self) -> str:
        """The identifier, under the reference's name."""
        return self.identifier

    @property
    def unwrapped(self) -> Callable[..., Any]:
        """The decorated function itself: calling it skips the argument check."""
        return self.function

    @property
    def priority(self) -> int:
        return self.kind.priority

    @property
    def timeout(self) -> timedelta | None:
        return self._timeout

    @property
    def max_attempts(self) -> int:
        return self.kind.max_attempts

    @property
    def queue_size(self) -> int | None:
        return self.kind.queue_size

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here and now, after the argument check of ``.delay()``: arguments that
        could not be queued raise the same :class:`InvalidArgumentsError` here."""
        serialize_arguments(self.identifier, args, kwargs)
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<TaskHandler {self.identifier}>"

    def delay(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        delay_until: datetime | None = None,
        connection: Connection | None = None,
        raise_if_full: bool = False,
    ) -> int | None:
        """Run the task by ``TASK_RUN_METHOD``; return its id when it was queued, else None.

        With ``connection=`` (TASK_PROCESSOR mode) the row is inserted in the caller's open
        transaction: a rollback leaves no task, a commit wakes idle workers. When
        ``queue_size`` tasks already wait, None (and a warning), or with ``raise_if_full``
        a :class:`TaskQueueFullError`.
        """
        _check_connection(self.identifier, connection)
        new_task = _new_task(self.identifier, args, kwargs, delay_until)
        task_id = self._enqueue([new_task], connection)[0]
        if task_id is None and raise_if_full and run_method() is TaskRunMethod.TASK_PROCESSOR:
            raise TaskQueueFullError(self.identifier, self.queue_size or 0)
        return task_id

    def delay_many(
        self, calls: Iterable[Mapping[str, Any]], connection: Connection | None = None
    ) -> list[int | None]:
        """Enqueue many calls in one round trip; each call is a dict with optional keys
        ``args``, ``kwargs`` and ``delay_until``. Returns one id (or None) per call. A bad
        call refuses them all, naming its index."""
        if isinstance(calls, (Mapping, str, bytes)):
            raise TypeError(
                f"{self.identifier}: delay_many takes a list of calls (dicts with "
                f"args, kwargs and delay_until), got a {type(calls).__name__}; for "
                f"one call use .delay() or wrap it in a list"
            )
        _check_connection(self.identifier, connection)
        new_tasks = []
        for index, call in enumerate(calls):
            label = f"{self.identifier} calls[{index}]"
            if not isinstance(call, Mapping):
                raise TypeError(
                    f"{label}: a call must be a dict with args, kwargs and "
                    f"delay_until, got {type(call).__name__}"
                )
            unknown = set(call) - _CALL_KEYS
            if unknown:
                raise TypeError(
                    f"{label}: unknown keys in a call: {sorted(unknown)}; "
                    f"use args, kwargs and delay_until"
                )
            new_tasks.append(
                _new_task(label, call.get("args"), call.get("kwargs"), call.get("delay_until"))
            )
        return self._enqueue(new_tasks, connection)

    def _enqueue(
        self, new_tasks: list[enqueue.NewTask], connection: Connection | None
    ) -> list[int | None]:
        method = run_method()
        if method is not TaskRunMethod.TASK_PROCESSOR:
            for task in new_tasks:
                self._run_here(method, task)
            return [None] * len(new_tasks)
        ids = enqueue.enqueue(self.kind, new_tasks, connection)
        refused = ids.count(None)
        if refused:
            logger.warning(
                "task %s: queue_size %s reached; %d of %d not queued",
                self.identifier,
                self.queue_size,
                refused,
                len(ids),
            )
        return ids

    def _run_here(self, method: TaskRunMethod, task: enqueue.NewTask) -> None:
        """Run without the processor, on the JSON round-tripped arguments, so a task sees the
        same values in every mode. A future ``delay_until`` is honoured by a timer thread in
        SEPARATE_THREAD mode and ignored (run now) in SYNCHRONOUSLY mode."""
        args, kwargs = json.loads(task.args_json), json.loads(task.kwargs_json)
        if method is TaskRunMethod.SYNCHRONOUSLY:
            self.function(*args, **kwargs)
            return
        wait = 0.0
        if task.scheduled_for is not None:
            wait = max(0.0, (task.scheduled_for - datetime.now(UTC)).total_seconds())
        timer = threading.Timer(wait, _run_logged, (self.function, self.identifier, args, kwargs))
        timer.daemon = True
        self._start_thread(timer)

    def _start_thread(self, thread: threading.Thread) -> None:
        """Start ``thread`` now, or with ``transaction_on_commit`` once the application's
        transaction commits (see :func:`_after_commit`)."""
        if self.transaction_on_commit:
            _after_commit(thread.start)
        else:
            thread.start()

    def run_in_thread(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> threading.Thread:
        """Run in an unmanaged daemon thread (no persistence, no retry): now, or with
        ``transaction_on_commit`` once the application's transaction commits. The arguments
        are checked as ``.delay()`` checks them."""
        serialize_arguments(self.identifier, _none_as(args, ()), kwargs)
        thread = threading.Thread(
            target=_run_logged,
            args=(self.function, self.identifier, args, kwargs or {}),
            name=f"task {self.identifier}",
            daemon=True,
        )
        self._start_thread(thread)
        return thread


_CALL_KEYS = frozenset({"args", "kwargs", "delay_until"})  # what a call of delay_many holds


def _new_task(
    label: str, args: Sequence[Any] | None, kwargs: Any, delay_until: Any
) -> enqueue.NewTask:
    """One call as a row to insert; ``label`` names the call in errors."""
    args_json, kwargs_json = serialize_arguments(label, _none_as(args, ()), kwargs)
    if delay_until is not None:
        if not isinstance(delay_until, datetime):
            raise TypeError(
                f"{label}: delay_until must be a datetime, got {type(delay_until).__name__}"
            )
        if delay_until.utcoffset() is None:  # naive, or a tzinfo that gives no offset
            raise ValueError(
                f"{label}: delay_until must be timezone-aware, with a tzinfo "
                f"that gives its UTC offset (e.g. datetime.now(timezone.utc) "
                f"+ timedelta(hours=1))"
            )
    return enqueue.NewTask(args_json, kwargs_json, delay_until)


def _check_connection(identifier: str, connection: Any) -> None:
    """``connection=`` must be a psycopg2 connection: anything else would fail later, or
    worse, be ignored."""
    if connection is not None and not isinstance(connection, Connection):
        raise TypeError(
            f"{identifier}: connection= must be an open psycopg2 connection (the "
            f"one whose transaction the task joins) or None, got "
            f"{type(connection).__name__}"
        )


def _none_as(value: Any, default: Any) -> Any:
    """``value``, or ``default`` for None: other falsy values (0, "") are refused later."""
    return default if value is None else value


def _default_identifier(function: Callable[..., Any], task_name: str | None) -> str:
    """``<last module part>.<name>``, as the reference names tasks."""
    module_name = function.__module__.rsplit(".", 1)[-1]
    return f"{module_name}.{task_name or getattr(function, '__name__', type(function).__name__)}"


def register_task_handler(
    task_name: str | None = None,
    priority: int = TaskPriority.NORMAL,
    timeout: timedelta | None = timedelta(seconds=60),
    max_attempts: int = 3,
    queue_size: int | None = None,
    transaction_on_commit: bool = True,
) -> Callable[[Callable[..., Any]], TaskHandler]:
    """Register the decorated function as a task; ``timeout=None`` sets no time limit."""

    def decorator(function: Callable[..., Any]) -> TaskHandler:
        handler = TaskHandler(
            function,
            _default_identifier(function, task_name),
            priority,
            timeout,
            max_attempts,
            queue_size,
            transaction_on_commit,
        )
        registry.register(handler)
        return handler

    return decorator


def register_recurring_task(
    run_every: timedelta,
    first_run_time: datetime | time_of_day | None = None,
    timeout: timedelta | None = timedelta(minutes=30),
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    task_name: str | None = None,
    *,
    priority: int | None = None,
    max_attempts: int | None = None,
) -> Callable[[Callable[..., Any]], TaskHandler]:
    """Register the decorated function as a task that runs every ``run_every``
    (see :mod:`common.recurring` for the schedule).

    It is also an ordinary task handler (the identifier rules are the same, and it can be
    ``.delay()``-ed). ``priority`` and ``max_attempts`` default to those of any task.
    """
    run_every = recurring.check_run_every(run_every)
    origin = recurring.grid_origin(first_run_time)
    options: dict[str, Any] = {"task_name": task_name, "timeout": timeout}
    if priority is not None:
        options["priority"] = priority
    if max_attempts is not None:
        options["max_attempts"] = max_attempts

    def decorator(function: Callable[..., Any]) -> TaskHandler:
        handler = register_task_handler(**options)(function)
        try:
            args_json, kwargs_json = serialize_arguments(handler.identifier, args, kwargs)
        except Exception:
            registry.unregister(handler.identifier)
            raise
        recurring.add(
            recurring.RecurringDefinition(handler.kind, run_every, origin, args_json, kwargs_json)
        )
        return handler

    return decorator


def cancel_task(task_id: int, connection: Connection | None = None) -> bool:
    """Cancel a waiting task: it will not run. True if cancelled; False if it is not waiting
    (running, finished, already cancelled) or does not exist.

    On ``connection`` the change is part of the caller's transaction; without it, it is
    committed at once on a connection of its own.
    """
    if connection is not None:
        with connection.cursor() as cursor:
            return bool(control.cancel(cursor, [task_id]))
    own = db.connect(db.queue_database_url(), "enqueue")
    try:
        with own.cursor() as cursor:
            return bool(control.cancel(cursor, [task_id]))
    finally:
        own.close()
