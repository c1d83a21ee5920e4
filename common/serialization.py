"""Task arguments are JSON, checked at ``.delay()`` so a bad argument fails its caller at once.

Python's ``json`` module converts silently where it should not (integer dictionary keys become
strings, NaN becomes a non-standard token), and unknown objects only fail once a worker reads
them. :func:`serialize_arguments` accepts exactly what survives a round trip, plus tuples, which
travel as JSON arrays and arrive as lists. The text it returns is what the task is called with
(the database keeps it as written, in a ``json`` column), so floats stay floats, -0.0 stays
-0.0 and dictionaries keep their order. Arguments nested deeper than :data:`MAX_NESTING`, or
integers with more digits than Python converts to text, are refused: a worker could not decode
them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from common.config import ConfigError, bounded_int
from common.errors import InvalidArgumentsError

DEFAULT_MAX_ARGUMENT_BYTES = 1024 * 1024
MAX_NESTING = 100  # lists and dicts inside each other; far below any decoder's recursion limit
_positive_bytes = bounded_int(1, 1024 * 1024 * 1024)


class ArgumentError(InvalidArgumentsError):
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


def _check(value: Any, path: str, depth: int = 0) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ArgumentError(
                f"{path} contains a lone surrogate ({_preview(value)}), which "
                f"is not valid text; decode the bytes it came from with "
                f"errors='replace'"
            ) from None
        if "\x00" in value:
            raise ArgumentError(
                f"{path} contains a NUL character, which PostgreSQL's jsonb "
                f"cannot store; remove it or encode the text (e.g. base64)"
            )
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        _check_digits(value, path)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ArgumentError(
                f"{path} is {value!r}, which JSON cannot carry; pass a finite number or None"
            )
        return
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_NESTING:
        where = path.split("[", 1)[0] + "[" + path.split("[", 1)[1][:40] + "...]"
        raise ArgumentError(
            f"{where} is nested more than {MAX_NESTING} lists or dicts deep; "
            f"flatten it, or pass a reference (an id) to the data instead"
        )
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ArgumentError(
                    f"{path} has the key {key!r} ({type(key).__name__}); JSON "
                    f"object keys must be strings"
                )
            _check(key, f"{path} key {key!r}")
            _check(item, f"{path}[{key!r}]", depth + 1)
        return
    raise ArgumentError(
        f"{path} has type {type(value).__name__} ({_preview(value)}), which JSON cannot carry; "
        f"pass str, int, float, bool, None, list or dict (for example an id instead of an object)"
    )


def _check_digits(value: int, path: str) -> None:
    """Python refuses to write (and to read) integers longer than its digit limit."""
    limit = sys.get_int_max_str_digits()
    # bit_length bounds the digits from above: only near the limit is the conversion tried
    if not limit or value.bit_length() * 0.30103 < limit - 1:
        return
    try:
        str(value)
    except ValueError:
        raise ArgumentError(
            f"{path} is an integer of more than {limit} digits, which cannot "
            f"be carried as JSON text; pass it as a string"
        ) from None


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# One encoder for every call: json.dumps with options builds a new one each time, a good part
# of what a .delay() costs in Python.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def serialize_arguments(
    task: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> tuple[str, str]:
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
    args_json = _encode(list(args)) if args else "[]"  # none: no encoder to start
    kwargs_json = _encode(kwargs) if kwargs else "{}"
    size = len(args_json.encode()) + len(kwargs_json.encode())
    limit = max_argument_bytes()
    if size > limit:
        raise ArgumentError(
            f"{task}: arguments are {size} bytes as JSON, over the limit of {limit}; pass a "
            f"reference (an id, a URL) instead, or raise TASK_PROCESSOR_MAX_ARGUMENT_BYTES"
        )
    return args_json, kwargs_json
