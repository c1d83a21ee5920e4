"""The process-wide table of task handlers, keyed by task identifier."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, Protocol

from common.errors import TaskProcessingError


class Handler(Protocol):
    """What the registry keeps of a task handler (:class:`common.tasks.TaskHandler`)."""

    identifier: str
    function: Callable[..., Any]


class DuplicateTaskError(ValueError):
    """Two handlers were registered under one task identifier."""


class UnknownTaskError(TaskProcessingError, LookupError):
    """No handler is registered under a task identifier."""


class TaskModuleError(ImportError):
    """A module named by ``--tasks`` cannot be imported; the message gives the reason."""


_handlers: dict[str, Handler] = {}


def register(handler: Handler) -> None:
    """Add ``handler``; refuse a second handler under the same identifier."""
    existing = _handlers.get(handler.identifier)
    if existing is not None:
        raise DuplicateTaskError(
            f"task identifier {handler.identifier!r} is already registered by "
            f"{_origin(existing.function)}; pass "
            f"task_name= to give one of them another name"
        )
    _handlers[handler.identifier] = handler


def _origin(function: object) -> str:
    """``module.name`` of a task function, or of the class of a callable object."""
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{getattr(function, '__module__', '?')}.{name}"


def get(identifier: str) -> Handler:
    """The handler for ``identifier``; :class:`UnknownTaskError` says what is known."""
    try:
        return _handlers[identifier]
    except KeyError:
        raise UnknownTaskError(
            f"no task handler is registered as {identifier!r} in this processor; check the "
            f"--tasks modules it was started with (it knows {len(_handlers)} tasks)"
        ) from None


def identifiers() -> list[str]:
    """Every registered identifier, sorted."""
    return sorted(_handlers)


def unregister(identifier: str) -> None:
    """Remove a handler (for tests that define tasks on the fly)."""
    _handlers.pop(identifier, None)


def load_modules(modules: Iterable[str]) -> None:
    """Import each task module so that its handlers register themselves; raise
    :class:`TaskModuleError` for a module that cannot be imported or defines no task.

    The error's ``__cause__`` is set only where the module's own code raised: a traceback
    helps there, not for a name that is simply not on the path. The working directory is
    searched first, as ``python -m`` does, so that a console script started from a project's
    root finds the project's modules.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        before = set(_handlers)
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is None or not _is_part_of(module, error.name):
                raise _import_failed(module, error) from error
            raise TaskModuleError(
                f"cannot import task module {module!r}: there is no module {error.name!r} on "
                f"the Python path (the working directory {os.getcwd()}, then PYTHONPATH and "
                f"the installed packages); check the name given to --tasks"
            ) from None
        except Exception as error:
            raise _import_failed(module, error) from error
        if not _defines_tasks(imported, set(_handlers) - before):
            raise TaskModuleError(
                f"task module {module!r} defines no task: none of its functions is decorated "
                f"with @register_task_handler or @register_recurring_task; check the name "
                f"given to --tasks"
            )


def _is_part_of(module: str, missing: str) -> bool:
    """Is ``missing`` the module itself or one of its parent packages?"""
    return module == missing or module.startswith(missing + ".")


def _import_failed(module: str, error: Exception) -> TaskModuleError:
    return TaskModuleError(
        f"cannot import task module {module!r}: {type(error).__name__}: {error}{_where(error)}"
    )


def _defines_tasks(module: ModuleType, registered_by_import: set[str]) -> bool:
    """Did importing ``module`` register a task, or does it hold registered ones (it may have
    been imported before, by another task module)?"""
    registered = {id(handler) for handler in _handlers.values()}
    return bool(registered_by_import) or any(
        id(value) in registered for value in vars(module).values()
    )


def _where(error: Exception) -> str:
    """Where a module's own code raised; import and syntax errors already say it."""
    if isinstance(error, (ImportError, SyntaxError)):
        return ""
    origin = traceback.extract_tb(error.__traceback__)[-1]
    return f" ({origin.filename}, line {origin.lineno})"
