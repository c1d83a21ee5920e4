"""A prepared statement run by libpq's extended protocol on a psycopg2 connection.

psycopg2 runs a prepared statement as the text ``EXECUTE name ('...', ...)``: the client quotes
every parameter into that text and the answer goes through psycopg2's type casters. libpq's
``PQexecPrepared`` sends the parameters as they are (one Bind message) and hands back the
answer as text. For the one-row insert of a ``.delay()``, the statement an application sends
most, that is about a tenth less of the caller's CPU (bench/delay_profile.py; docs/
architecture.md, "Choices"). Only success is read here: a statement the server refuses is
left to psycopg2 to send again and raise as the driver does.

psycopg2 hands out its connection's ``PGconn`` (``connection.pgconn_ptr``) for calls of this
kind, and libpq is bound through psycopg2's own extension module, so these functions are those
of the very libpq that made the connection. :func:`usable` says no, and the caller keeps to
psycopg2, where they are missing, where a wait callback makes psycopg2 cooperative (gevent,
eventlet: a blocking call from here would stall their loop), where the connection is not in
autocommit (psycopg2 would not have begun the transaction the caller expects) or does not speak
UTF-8.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from datetime import datetime

import psycopg2
import psycopg2.extensions

from common.db import Connection

_PGRES_TUPLES_OK = 2
_CONNECTION_OK = 0

Parameter = str | int | datetime | None


class _Libpq:
    """The few libpq functions used here, with their C signatures."""

    def __init__(self, library: ctypes.CDLL) -> None:
        pointer, text = ctypes.c_void_p, ctypes.c_char_p
        self.exec_prepared = library.PQexecPrepared
        self.exec_prepared.restype = pointer
        self.exec_prepared.argtypes = [
            pointer,
            text,
            ctypes.c_int,
            ctypes.POINTER(text),
            pointer,
            pointer,
            ctypes.c_int,
        ]
        self.result_status = library.PQresultStatus
        self.result_status.argtypes = [pointer]
        self.get_value = library.PQgetvalue
        self.get_value.restype = text
        self.get_value.argtypes = [pointer, ctypes.c_int, ctypes.c_int]
        self.connection_error = library.PQerrorMessage
        self.connection_error.restype = text
        self.connection_error.argtypes = [pointer]
        self.status = library.PQstatus
        self.status.argtypes = [pointer]
        self.clear = library.PQclear
        self.clear.restype = None
        self.clear.argtypes = [pointer]


def _bind() -> _Libpq | None:
    try:
        return _Libpq(ctypes.CDLL(psycopg2._psycopg.__file__))
    except (OSError, AttributeError):  # no shared libpq behind psycopg2: keep to psycopg2
        return None


_LIBPQ = _bind()


def usable(connection: Connection) -> bool:
    """Can :func:`first_value` run on ``connection`` as psycopg2 itself would?"""
    return (
        _LIBPQ is not None
        and connection.autocommit
        and connection.encoding == "UTF8"
        and psycopg2.extensions.get_wait_callback() is None
    )


def first_value(
    connection: Connection, statement: str, parameters: Sequence[Parameter]
) -> str | None:
    """Run the prepared ``statement`` with ``parameters`` on ``connection`` (see
    :func:`usable`) and return the first column of its first row as text.

    None when the server refused it: the statement was its own transaction, so it did
    nothing, and the caller runs it again through psycopg2, whose error (with its SQLSTATE
    and diagnostics, as the application expects of the driver) is the one to raise. A broken
    connection raises :class:`psycopg2.OperationalError`: nothing is run again there, for the
    commit may have happened.
    """
    assert _LIBPQ is not None  # usable() said so
    values = (ctypes.c_char_p * len(parameters))(*map(_as_text, parameters))
    pgconn = connection.pgconn_ptr
    result = _LIBPQ.exec_prepared(pgconn, statement.encode(), len(values), values, None, None, 0)
    try:
        if _LIBPQ.result_status(result) == _PGRES_TUPLES_OK:
            return _LIBPQ.get_value(result, 0, 0).decode()
        if not result or _LIBPQ.status(pgconn) != _CONNECTION_OK:
            reason = _LIBPQ.connection_error(pgconn) or b"the connection was lost"
            raise psycopg2.OperationalError(reason.decode(errors="replace").strip())
        return None
    finally:
        _LIBPQ.clear(result)  # PQclear(NULL) does nothing


def _as_text(value: Parameter) -> bytes | None:
    """A parameter in PostgreSQL's text input format (None: NULL)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        text = value.isoformat()
    elif isinstance(value, (str, int)):
        text = str(value)
    else:
        raise TypeError(f"cannot send a {type(value).__name__} as a statement parameter")
    if "\x00" in text:  # C strings end there: refuse as psycopg2 does, never truncate
        raise ValueError("A string literal cannot contain NUL (0x00) characters.")
    return text.encode()
