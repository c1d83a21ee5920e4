"""Task arguments are JSON, checked at ``.delay()`` so a bad argument fails its caller at once.

Python's ``json`` module converts silently where it should not (integer dictionary keys become
strings, NaN becomes a non-standard token), and unknown objects only fail once a worker reads
them. :func:`serialize_arguments` accepts exactly what survives a round trip, plus tuples, which
travel as JSON arrays and arrive as lists.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Mapping, Sequence

from common.config import ConfigError, bounded_int

DEFAULT_MAX_ARGUMENT_BYTES = 1024 * 1024
_positive_bytes = bounded_int(1, 1024 * 1024 * 1024)


class ArgumentError(TypeError):
    """A task argument cannot be carried as JSON, or the arguments are too large."""


def max_argument_bytes() -> int:
    """The size limit of serialised arguments (``TASK_PROCESSOR_MAX_ARGUMENT_BYTES``)."""
    raw = os.environ.get("TASK_PROCESSOR_MAX_ARGUMENT_BYTES")
    if not raw:
        return DEFAULT_MAX_ARGUMENT_BYTES
    try:
        return _positive_bytes(raw)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"TASK_PROCESSOR_MAX_ARGUMENT_BYTES: {error}") from None


def _check(value: Any, path: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ArgumentError(f"{path} contains a lone surrogate ({_preview(value)}), which "
                                f"is not valid text; decode the bytes it came from with "
                                f"errors='replace'") from None
        if "\x00" in value:
            raise ArgumentError(f"{path} contains a NUL character, which PostgreSQL's jsonb "
                                f"cannot store; remove it or encode the text (e.g. base64)")
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ArgumentError(f"{path} is {value!r}, which JSON cannot carry; pass a finite "
                                f"number or None")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ArgumentError(f"{path} has the key {key!r} ({type(key).__name__}); JSON "
                                    f"object keys must be strings")
            _check(key, f"{path} key {key!r}")
            _check(item, f"{path}[{key!r}]")
        return
    raise ArgumentError(
        f"{path} has type {type(value).__name__} ({_preview(value)}), which JSON cannot carry; "
        f"pass str, int, float, bool, None, list or dict (for example an id instead of an object)"
    )


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# One encoder for every call: json.dumps with options builds a new one each time, a good part
# of what a .delay() costs in Python.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def serialize_arguments(task: str, args: Sequence[Any] = (),
                        kwargs: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Return ``(args_json, kwargs_json)``; raise :class:`ArgumentError` naming the argument."""
    if not isinstance(args, (list, tuple)):
        raise ArgumentError(f"{task}: args must be a tuple or list, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ArgumentError(f"{task}: kwargs must be a dict, got {type(kwargs).__name__}")
    for index, value in enumerate(args):
        _check(value, f"{task}: args[{index}]")
    for key, value in (kwargs or {}).items():
        if not isinstance(key, str):
            raise ArgumentError(f"{task}: kwargs key {key!r} must be a string")
        _check(key, f"{task}: kwargs key {key!r}")
        _check(value, f"{task}: kwargs[{key!r}]")
    args_json = _encode(list(args))
    kwargs_json = _encode(kwargs or {})
    size = len(args_json.encode()) + len(kwargs_json.encode())
    limit = max_argument_bytes()
    if size > limit:
        raise ArgumentError(
            f"{task}: arguments are {size} bytes as JSON, over the limit of {limit}; pass a "
            f"reference (an id, a URL) instead, or raise TASK_PROCESSOR_MAX_ARGUMENT_BYTES"
        )
    return args_json, kwargs_json
