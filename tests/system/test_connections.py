"""What every connection is opened with: GSSAPI encryption is skipped where Kerberos could not
provide it (libpq's default would start Kerberos at each connection only to find nothing), and
left to libpq wherever it could. And how a connection whose statement outlives its deadline is
cut."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from common import db


@pytest.fixture
def no_kerberos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A machine without Kerberos: none of its files, none of its variables."""
    monkeypatch.setattr(db, "_KERBEROS_FILES", (str(tmp_path / "krb5.conf"),))
    for name in db._KERBEROS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    db._without_kerberos.cache_clear()  # decided once per URL in a process
    yield tmp_path
    db._without_kerberos.cache_clear()


def gssencmode(url: str) -> str:
    connection = db.connect(url, "connections test")
    try:
        return connection.get_dsn_parameters()["gssencmode"]
    finally:
        connection.close()


def test_without_kerberos_a_connection_does_not_look_for_it(database_url, no_kerberos):
    assert gssencmode(database_url) == "disable"


def test_a_kerberos_configuration_leaves_the_choice_to_libpq(database_url, no_kerberos):
    (no_kerberos / "krb5.conf").write_text("[libdefaults]\n")
    assert gssencmode(database_url) == "prefer"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KRB5CCNAME", "FILE:/nonexistent"),
        ("PGGSSENCMODE", "prefer"),
        ("KRB5_CONFIG", "/x"),
        ("PGSERVICE", "queue"),
    ],
)
def test_a_kerberos_variable_leaves_the_choice_to_libpq(
    database_url, no_kerberos, monkeypatch, variable, value
):
    services = no_kerberos / "pg_service.conf"
    services.write_text("[queue]\n")  # the service PGSERVICE names, choosing nothing
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv(variable, value)
    assert gssencmode(database_url) == "prefer"


def test_the_urls_own_choice_is_kept(database_url, no_kerberos):
    separator = "&" if "?" in database_url else "?"
    assert gssencmode(f"{database_url}{separator}gssencmode=prefer") == "prefer"


def test_a_connection_services_choice_is_kept(database_url, no_kerberos, monkeypatch):
    # A keyword passed beside the URL would override the service file's entry.
    services = no_kerberos / "pg_service.conf"
    services.write_text("[queue]\ngssencmode=prefer\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    separator = "&" if "?" in database_url else "?"
    assert gssencmode(f"{database_url}{separator}service=queue") == "prefer"


def test_a_statement_past_its_deadline_has_its_connection_cut(database_url):
    """The client gives up at its deadline whatever the server does: a statement still running
    fails with a connection error (the socket is shut down under libpq), not after it ends."""
    connection = db.connect(database_url, "deadline test")
    try:
        with (
            pytest.raises(psycopg2.OperationalError),
            db.Deadline(connection, 0.2) as deadline,
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT pg_sleep(60)")
        assert deadline.fired
    finally:
        connection.close()
