"""Server-side prepared statements for the statements a process sends thousands of times.

psycopg2 sends every statement as text, so PostgreSQL parses and plans it on every call; for
the claim and the recording of a batch, planning costs about as much as running them. A
:class:`Prepared` statement is written with the usual ``%(name)s`` placeholders, prepared once
per connection (``PREPARE``) and run with ``EXECUTE``, which skips both.
"""

from __future__ import annotations

import re
from typing import Any

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class Prepared:
    def __init__(self, name: str, sql: str, types: dict[str, str]) -> None:
        """``types``: the PostgreSQL type of each named parameter (PREPARE needs them)."""
        order: list[str] = []

        def number(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in order:
                order.append(key)
            return f"${order.index(key) + 1}"

        body = _PLACEHOLDER.sub(number, sql)
        missing = set(order) - set(types)
        if missing:
            raise ValueError(f"{name}: no type given for {sorted(missing)}")
        self.name = name
        self.prepare = f"PREPARE {name} ({', '.join(types[k] for k in order)}) AS {body}"
        self.execute = f"EXECUTE {name} ({', '.join(f'%({k})s' for k in order)})"

    def prepare_on(self, cursor: Any) -> None:
        """Prepare on the cursor's connection (once per connection)."""
        cursor.execute(self.prepare)
