"""The process-wide table of task handlers, keyed by task identifier."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import TYPE_CHECKING, Iterable

from common.errors import TaskProcessingError

if TYPE_CHECKING:
    from common.tasks import TaskHandler


class DuplicateTaskError(ValueError):
    """Two handlers were registered under one task identifier."""


class UnknownTaskError(TaskProcessingError, LookupError):
    """No handler is registered under a task identifier."""


class TaskModuleError(ImportError):
    """A module named by ``--tasks`` cannot be imported; the message gives the reason."""


_handlers: dict[str, "TaskHandler"] = {}


def register(handler: "TaskHandler") -> None:
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


def get(identifier: str) -> "TaskHandler":
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
    """Import each task module so that its handlers register themselves.

    The working directory is searched first, as ``python -m`` does, so that a console script
    started from a project's root finds the project's modules.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:
            raise TaskModuleError(
                f"cannot import task module {module!r}: {type(error).__name__}: {error}"
                f"{_where(error)}"
            ) from error


def _where(error: Exception) -> str:
    """Where a module's own code raised; import and syntax errors already say it."""
    if isinstance(error, (ImportError, SyntaxError)):
        return ""
    origin = traceback.extract_tb(error.__traceback__)[-1]
    return f" ({origin.filename}, line {origin.lineno})"
