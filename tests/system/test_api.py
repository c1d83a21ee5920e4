"""The HTTP API over real HTTP to a real ``run-api`` process: endpoints, statuses, token."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from api_support import BIN, api_server, environment
from harness import wait_for

from api.app import Api, mount
from api.settings import ApiSettings

UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/nowhere"


def insert_task(conn, state: str, due_in_seconds: float = 0) -> None:
    with conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO task_processor.tasks (identifier, state, scheduled_for) "
            "VALUES ('tests.sample', %s, now() + make_interval(secs => %s))",
            (state, due_in_seconds),
        )


def test_health_reports_a_working_database_as_json(database_url):
    with api_server(database_url) as server:
        status, headers, body = server.get("/health?format=json")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert body == {"database": "working"}  # no round-trip check unless enabled
        assert server.get("/health/")[0] == 200


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/nothing-here", 404, "no such endpoint"),
        ("/health?format=xml", 400, "format=json"),
        ("/health?format=json&format=json", 400, "more than once"),
        ("/health?format=%ff", 400, "UTF-8"),
        ("/processor/monitoring?format=html", 400, "format=json"),
    ],
)
def test_bad_requests_get_json_errors(database_url, path, status, fragment):
    with api_server(database_url) as server:
        got, headers, body = server.get(path)
        assert got == status
        assert headers["Content-Type"] == "application/json"
        assert fragment in body["error"]
        assert "Traceback" not in body["error"]


def test_wrong_method_is_405_with_allow_header(database_url):
    with api_server(database_url) as server:
        for path in ("/health", "/processor/monitoring"):
            status, headers, body = server.get(path, method="POST")
            assert status == 405
            assert headers["Allow"] == "GET"
            assert "only GET" in body["error"]


def test_monitoring_counts_tasks_by_state(database_url, conn):
    for state, due_in in [
        ("waiting", -10),
        ("waiting", 0),
        ("waiting", 3600),
        ("running", 0),
        ("dead", 0),
        ("succeeded", 0),
    ]:
        insert_task(conn, state, due_in)
    with api_server(database_url) as server:
        status, headers, body = server.get("/processor/monitoring")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body["waiting"] == 2  # due and not claimed: the reference's number
    assert (body["scheduled"], body["running"], body["dead"]) == (1, 1, 1)
    assert body["oldest_waiting_seconds"] >= 10
    assert (body["processors_alive"], body["workers_alive"]) == (0, 0)


def test_monitoring_of_an_empty_queue(database_url):
    with api_server(database_url) as server:
        status, _, body = server.get("/processor/monitoring")
    assert status == 200
    assert body == {
        "waiting": 0,
        "scheduled": 0,
        "running": 0,
        "dead": 0,
        "oldest_waiting_seconds": 0,
        "processors_alive": 0,
        "workers_alive": 0,
        "waiting_unrunnable": 0,
    }


def test_monitoring_requires_the_bearer_token_when_one_is_set(database_url):
    with api_server(database_url, TASK_PROCESSOR_MONITORING_TOKEN="s3cret") as server:
        status, headers, body = server.get("/processor/monitoring")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in body["error"]
        for wrong in ("Bearer nope", "Basic s3cret", "s3cret", "Bearer s3cret-and-more"):
            assert server.get("/processor/monitoring", {"Authorization": wrong})[0] == 401
        status, _, body = server.get("/processor/monitoring", {"Authorization": "Bearer s3cret"})
        assert status == 200 and body["waiting"] == 0
        assert server.get("/health?format=json")[0] == 200  # health stays open


def test_database_down_is_500_on_health_and_503_on_monitoring():
    with api_server(UNREACHABLE_URL) as server:
        status, headers, body = server.get("/health?format=json")
        assert status == 500
        assert headers["Content-Type"] == "application/json"
        assert "cannot connect to database 'nowhere' on 127.0.0.1:1" in body["database"]
        status, _, body = server.get("/processor/monitoring")
        assert status == 503
        assert "cannot connect" in body["error"]


def test_connections_killed_by_the_server_are_replaced(database_url, conn):
    with api_server(database_url) as server:
        assert server.get("/health?format=json")[0] == 200
        wait_for(
            lambda: fetch_api_backends(conn, database_url, terminate=True),
            message="the API's idle connection to be terminated",
        )
        status, _, body = server.get("/health?format=json")
        assert (status, body) == (200, {"database": "working"})
        assert server.get("/processor/monitoring")[0] == 200


def fetch_api_backends(conn, database_url: str, terminate: bool = False) -> list[tuple]:
    name = database_url.rsplit("/", 1)[-1]
    function = "pg_terminate_backend(pid)" if terminate else "pid"
    with conn.cursor() as cursor:
        cursor.execute(
            f"SELECT {function} FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'task-processor api'",
            (name,),
        )
        return cursor.fetchall()


def test_the_api_names_its_connections(database_url, conn):
    with api_server(database_url) as server:
        server.get("/processor/monitoring")
        assert fetch_api_backends(conn, database_url)


def run_api_expecting_exit(database_url: str, *arguments: str, **settings: str):
    return subprocess.run(
        [sys.executable, str(BIN / "run-api"), *arguments],
        env=environment(database_url, **settings),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_an_outdated_schema_is_refused_at_start_with_what_to_run(empty_database_url):
    result = run_api_expecting_exit(empty_database_url, "--bind", "127.0.0.1:0")
    assert result.returncode == 78
    assert "task-processor migrate" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "settings", "fragment"),
    [
        (["--bind", "localhost"], {}, "HOST:PORT"),
        (["--bind", "127.0.0.1:99999"], {}, "HOST:PORT"),
        ([], {"ENABLE_TASK_PROCESSOR_HEALTH_CHECK": "maybe"}, "ENABLE_TASK_PROCESSOR_HEALTH_CHECK"),
        (
            [],
            {"TASK_PROCESSOR_HEALTH_CHECK_TIMEOUT": "soon"},
            "TASK_PROCESSOR_HEALTH_CHECK_TIMEOUT",
        ),
    ],
)
def test_configuration_errors_name_the_setting(database_url, arguments, settings, fragment):
    result = run_api_expecting_exit(database_url, *arguments, **settings)
    assert result.returncode == 78
    assert fragment in result.stderr


def test_mount_serves_the_api_beside_another_application(database_url):
    """The same application object, mounted under a prefix next to a host application."""

    def host_application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"host:" + environ["PATH_INFO"].encode()]

    api = Api(ApiSettings.from_environment())
    server = make_server(
        "127.0.0.1",
        0,
        mount(host_application, prefix="/tasks", api=api),
        handler_class=QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(base + "/tasks/health?format=json", timeout=30) as response:
            assert response.read() == b'{"database": "working"}\n'
        with urllib.request.urlopen(base + "/other/page", timeout=30) as response:
            assert response.read() == b"host:/other/page"
        with urllib.request.urlopen(base + "/tasks/metrics", timeout=30) as response:
            assert b"task_processor_processors" in response.read()
        # Mounted, the API cannot know who reaches it: without a token the dashboard is shut.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/tasks/dashboard/", timeout=30)
        assert refused.value.code == 403
        assert b"TASK_PROCESSOR_DASHBOARD_TOKEN" in refused.value.read()
    finally:
        server.shutdown()
        server.server_close()
        api.close()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


def test_a_database_that_stops_answering_never_hangs_a_request(database_url):
    from tcp_proxy import TcpProxy

    from api import queries
    from api.pool import ConnectionPool
    from common.db import DatabaseUnavailable

    proxy = TcpProxy()
    pool = ConnectionPool(proxy.url(database_url), statement_timeout_ms=500)
    try:
        pool.run(queries.ping)  # a pooled connection, idle and healthy
        proxy.drop_replies()  # the server still takes requests, but no answer comes back
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="did not answer within 2 s"):
            pool.run(queries.ping)
        assert time.monotonic() - started < 10  # bounded by the pool, not by TCP's 15 minutes
    finally:
        pool.close()
        proxy.cut()
