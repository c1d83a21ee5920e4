"""A processor's connections use TLS when its URL asks for it, although the processor loads
psycopg2 without Python's ``ssl`` module (supervisor/__init__.py): libpq does TLS with its own
OpenSSL."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from clusters import Cluster, server_programs_missing
from commands import admin
from harness import Processor, query

pytestmark = pytest.mark.slow


@pytest.fixture
def tls_server() -> Iterator[Cluster]:
    missing = server_programs_missing() or (
        None if shutil.which("openssl") else "the openssl program is missing"
    )
    if missing:
        pytest.skip(missing)
    cluster = Cluster("tls").init_primary().enable_tls().start()
    try:
        yield cluster
    finally:
        cluster.stop(remove=True)


def test_every_connection_of_a_processor_is_encrypted_when_the_url_asks(tls_server, tmp_path):
    url = f"{tls_server.url}?sslmode=require"
    assert admin("migrate", DATABASE_URL=url).returncode == 0
    processor = Processor(url, tmp_path / "processor.log", "--numthreads", "2")
    try:
        processor.wait_ready(2, timeout=60)
        connections = query(
            url,
            """
            SELECT a.application_name, s.ssl FROM pg_stat_activity a
            JOIN pg_stat_ssl s USING (pid)
            WHERE a.application_name LIKE 'task-processor %%'""",
        )
    finally:
        processor.stop()
    roles = {name.split()[1] for name, _ in connections}
    assert {"supervisor", "worker"} <= roles, connections
    assert all(encrypted for _, encrypted in connections), connections
