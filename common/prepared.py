"""Server-side prepared statements for the statements a process sends thousands of times.

psycopg2 sends every statement as text, so PostgreSQL parses and plans it on every call; for
the claim and the recording of a batch, planning costs about as much as running them. A
:class:`Prepared` statement is written with the usual ``%(name)s`` placeholders, prepared once
per connection (``PREPARE``) and run with ``EXECUTE``, which skips both.

Behind a pooler that hands out server connections per transaction (PgBouncer in transaction
mode), a statement prepared on one server connection is missing on the next. Its name carries a
checksum of its text, so a statement of that name prepared by any client is this very statement;
where one turns out to be missing (:func:`vanished`), the caller sends the plain text from then
on (:attr:`Prepared.plain`): slower, never wrong.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import psycopg2.errors

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class Prepared:
    def __init__(
        self,
        name: str,
        sql: str,
        types: dict[str, str],
        literals: dict[str, int] | None = None,
    ) -> None:
        """``types``: the PostgreSQL type of each named parameter (PREPARE needs them).

        ``literals``: integer parameters that are the same at every call on a connection,
        written into the prepared statement itself (the plain text keeps the placeholder). After
        a few executions PostgreSQL runs a prepared statement with a generic plan, planned once,
        when that plan looks as cheap as planning each call anew; a ``LIMIT`` whose value it
        cannot see is costed as a tenth of the table, which makes the generic plan look dear
        and keeps the statement re-planned at every call.
        """
        self.plain = sql
        for key, value in (literals or {}).items():
            sql = sql.replace(f"%({key})s", str(int(value)))
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
        signature = ", ".join(types[key] for key in order)
        # A checksum, not hashlib: hashlib loads the system's OpenSSL into every process of
        # the processor, for names that only need to differ when the statements do.
        digest = zlib.crc32(f"{signature}\n{body}".encode())
        self.name = f"task_processor_{name}_{digest:08x}"
        self.prepare = f"PREPARE {self.name} ({signature}) AS {body}"
        self.execute = f"EXECUTE {self.name} ({', '.join(f'%({key})s' for key in order)})"
        self.parameters = tuple(order)  # the names, in the order of $1, $2, ...

    def prepare_on(self, cursor: Any) -> None:
        """Prepare on the cursor's connection (once per connection). A statement of the same
        name there already (another client's, through a pooler) is this one: the name says so."""
        try:
            cursor.execute(self.prepare)
        except psycopg2.errors.DuplicatePreparedStatement:
            pass


def vanished(error: BaseException) -> bool:
    """Was a prepared statement missing where it was run (a pooler in transaction mode)?"""
    return isinstance(error, psycopg2.errors.InvalidSqlStatementName)
