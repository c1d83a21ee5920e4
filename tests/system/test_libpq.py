"""The one-task insert of ``.delay()`` runs by libpq's own call on a real connection: it must
answer, and refuse, exactly as psycopg2 would, and step aside where psycopg2 must do the work."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pytest
from databases import fetch_all

from common import db, enqueue, libpq
from common.prepared import Prepared

ECHO = Prepared(
    "echo",
    "SELECT concat_ws('|', %(text)s, %(number)s, %(moment)s::timestamptz AT TIME ZONE 'UTC', "
    "coalesce(%(nothing)s, 'null'), 10 / %(divisor)s)",
    {
        "text": "text",
        "number": "integer",
        "moment": "timestamptz",
        "nothing": "text",
        "divisor": "integer",
    },
)


@pytest.fixture
def connection(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    connection = db.connect(database_url, "libpq test")
    with connection.cursor() as cursor:
        ECHO.prepare_on(cursor)
    yield connection
    connection.close()


def echo(connection, **values) -> str:
    return libpq.first_value(connection, ECHO.name, [values[name] for name in ECHO.parameters])


def test_parameters_reach_the_server_as_psycopg2_would_send_them(connection):
    values = {
        "text": "naïve 'quoted' \\ text",
        "number": -42,
        "moment": datetime(2100, 6, 1, 12, 30, 15, 250, tzinfo=timezone(timedelta(hours=5.5))),
        "nothing": None,
        "divisor": 5,
    }
    assert libpq.usable(connection)

    by_libpq = echo(connection, **values)

    with connection.cursor() as cursor:
        cursor.execute(ECHO.execute, values)
        assert by_libpq == cursor.fetchone()[0]
    assert by_libpq == "naïve 'quoted' \\ text|-42|2100-06-01 07:00:15.00025|null|2"


def test_a_refusal_is_left_to_psycopg2_and_leaves_the_connection_fit_for_use(connection):
    assert echo(connection, text="", number=0, moment=None, nothing=None, divisor=0) is None
    missing = Prepared("missing", "SELECT 1", {})
    assert libpq.first_value(connection, missing.name, []) is None

    assert (
        echo(connection, text="a", number=1, moment=None, nothing=None, divisor=1) == "a|1|null|10"
    )
    assert fetch_all(connection, "SELECT 1") == [(1,)]


def test_delay_on_a_refusing_server_raises_the_drivers_own_error(
    define, run_method, database_url, conn
):
    # As a primary demoted to a standby would refuse: the error is psycopg2's, SQLSTATE and all.
    run_method("TASK_PROCESSOR")
    handler = define()
    (database,) = fetch_all(conn, "SELECT current_database()")[0]
    with conn.cursor() as cursor:
        cursor.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    enqueue.close_own_connection()
    try:
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction) as refused:
            handler.delay()
        assert enqueue.on_own_connection(libpq.usable)
    finally:
        enqueue.close_own_connection()
        with conn.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
    assert refused.value.pgcode == "25006"
    assert "read-only transaction" in refused.value.diag.message_primary
    assert fetch_all(conn, "SELECT count(*) FROM task_processor.tasks") == [(0,)]


def test_a_connection_the_server_ended_raises_operational_error(connection, conn):
    (pid,) = fetch_all(connection, "SELECT pg_backend_pid()")[0]
    fetch_all(conn, "SELECT pg_terminate_backend(%s)", (pid,))

    for _ in range(2):  # the server's last word, then the dead connection itself
        with pytest.raises(psycopg2.OperationalError):
            echo(connection, text="", number=0, moment=None, nothing=None, divisor=1)


def test_a_nul_character_is_refused_not_cut_short(connection):
    with pytest.raises(ValueError, match="NUL"):
        echo(connection, text="before\x00after", number=0, moment=None, nothing=None, divisor=1)


def test_psycopg2_does_the_work_where_libpq_cannot_stand_in(database_url, monkeypatch):
    connection = db.connect(database_url, "libpq test")
    try:
        assert libpq.usable(connection)
        connection.autocommit = False  # psycopg2 would BEGIN first: libpq would not
        assert not libpq.usable(connection)
        connection.autocommit = True
        psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)  # gevent's way
        try:
            assert not libpq.usable(connection)
        finally:
            psycopg2.extensions.set_wait_callback(None)
    finally:
        connection.close()
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    latin1 = db.connect(database_url, "libpq test")
    try:
        assert latin1.encoding == "LATIN1" and not libpq.usable(latin1)
    finally:
        latin1.close()
