"""Task arguments as JSON: what is accepted arrives as it was given; what JSON cannot carry is
refused at ``.delay()``, naming the argument."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.serialization import ArgumentError, serialize_arguments

text = st.text().filter(lambda s: "\x00" not in s)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


def as_json_gives_it(value: Any) -> Any:
    """What a value looks like after JSON: tuples are lists."""
    if isinstance(value, (list, tuple)):
        return [as_json_gives_it(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json_gives_it(item) for key, item in value.items()}
    return value


@given(st.lists(json_values, max_size=5), st.dictionaries(text, json_values, max_size=5))
def test_accepted_arguments_come_back_as_given(args, kwargs):
    args_json, kwargs_json = serialize_arguments("app.task", args, kwargs)
    assert json.loads(args_json) == as_json_gives_it(args)
    assert json.loads(kwargs_json) == as_json_gives_it(kwargs)


def test_tuples_travel_as_lists():
    args_json, _ = serialize_arguments("app.task", ((1, (2, 3)),))
    assert json.loads(args_json) == [[1, [2, 3]]]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((math.nan,), None, r"app.task: args\[0\] is nan, which JSON cannot carry"),
        ((math.inf,), None, r"args\[0\] is inf"),
        (({1, 2},), None, r"args\[0\] has type set"),
        ((b"bytes",), None, r"args\[0\] has type bytes"),
        (({1: "a"},), None, r"args\[0\] has the key 1 \(int\)"),
        (("\ud800",), None, r"args\[0\] contains a lone surrogate"),
        (("a\x00b",), None, r"args\[0\] contains a NUL character"),
        ((), {"when": object()}, r"kwargs\['when'\] has type object"),
        ((), {1: "x"}, r"kwargs key 1 must be a string"),
        ("abc", None, r"args must be a tuple or list, got str"),
        ((), ["x"], r"kwargs must be a dict, got list"),
    ],
)
def test_what_json_cannot_carry_is_refused_naming_the_argument(args, kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        serialize_arguments("app.task", args, kwargs)


def test_arguments_over_the_size_limit_are_refused(monkeypatch):
    monkeypatch.setenv("TASK_PROCESSOR_MAX_ARGUMENT_BYTES", "100")
    with pytest.raises(ArgumentError, match="over the limit of 100"):
        serialize_arguments("app.task", ("x" * 200,))
