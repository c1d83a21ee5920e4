"""The dashboard over real HTTP to a real run-api: who may see and do what, the actions, the
pages, and escaping. The browser tests (test_dashboard_browser.py) drive the same pages."""

from __future__ import annotations

import re

import pytest
from api_support import api_server
from dashboard_support import DASHBOARD_TOKEN, MONITORING_TOKEN, Session, add_task, hidden, state_of
from databases import fetch_all

TOKENS = {
    "TASK_PROCESSOR_DASHBOARD_TOKEN": DASHBOARD_TOKEN,
    "TASK_PROCESSOR_MONITORING_TOKEN": MONITORING_TOKEN,
}


def test_on_loopback_without_a_token_it_is_read_only(conn, database_url):
    dead = add_task(conn, state="dead")
    with api_server(database_url) as server:
        session = Session(server)
        status, head, page = session.request("/dashboard/")
        assert status == 200 and head["Content-Type"].startswith("text/html")
        assert "read-only" in page and "csrf_token" not in page
        status, _, _ = session.request(
            "/dashboard/actions/requeue", {"task_id": dead, "csrf_token": "guess"}
        )
    assert status == 403
    assert state_of(conn, dead) == "dead"


def test_off_loopback_nothing_without_a_token(database_url):
    with api_server(database_url, bind="0.0.0.0:0") as server:
        status, _, page = Session(server).request("/dashboard/")
        assert status == 403 and "TASK_PROCESSOR_DASHBOARD_TOKEN" in page
    with api_server(database_url, bind="0.0.0.0:0", **TOKENS) as server:
        status, head, _ = Session(server).request("/dashboard/tasks")
        assert status == 303 and head["Location"].endswith("/dashboard/login")


def test_login_sets_an_httponly_samesite_cookie_and_wrong_tokens_are_refused(database_url):
    with api_server(database_url, bind="0.0.0.0:0", **TOKENS) as server:
        session = Session(server)
        assert session.login("wrong") == 401
        assert "tp_dashboard_session" not in session.cookies
        assert session.login(DASHBOARD_TOKEN) == 303
        cookie = next(
            h for h in session.set_cookie_headers if h.startswith("tp_dashboard_session=")
        )
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        status, _, page = session.request("/dashboard/")
        assert status == 200 and "full access" in page
        # Logging out needs the CSRF token too, and ends the session.
        assert session.request("/dashboard/logout", {"csrf_token": "x"})[0] == 403
        csrf = hidden(page, "csrf_token")
        assert session.request("/dashboard/logout", {"csrf_token": csrf})[0] == 303
        assert session.request("/dashboard/")[0] == 303


def test_a_forged_or_foreign_session_cookie_gives_nothing(database_url):
    with api_server(database_url, bind="0.0.0.0:0", **TOKENS) as server:
        session = Session(server)
        session.cookies["tp_dashboard_session"] = "act.99999999999.0000"
        assert session.request("/dashboard/")[0] == 303


def test_the_monitoring_token_reads_but_may_not_act(conn, database_url):
    dead = add_task(conn, state="dead")
    with api_server(database_url, bind="0.0.0.0:0", **TOKENS) as server:
        session = Session(server)
        assert session.login(MONITORING_TOKEN) == 303
        status, _, page = session.request(f"/dashboard/tasks/{dead}")
        assert status == 200 and "read-only" in page and "Requeue" not in page
        csrf = hidden(page, "csrf_token")  # the logout form's
        status, _, _ = session.request(
            "/dashboard/actions/requeue", {"task_id": dead, "csrf_token": csrf}
        )
    assert status == 403
    assert state_of(conn, dead) == "dead"


@pytest.fixture
def acting(database_url):
    """A logged-in session that may act, and the CSRF token of its pages."""
    with api_server(database_url, **TOKENS) as server:
        session = Session(server)
        assert session.login(DASHBOARD_TOKEN) == 303
        page = session.request("/dashboard/")[2]
        yield session, hidden(page, "csrf_token")


def test_actions_need_the_csrf_token(conn, acting):
    session, _ = acting
    dead = add_task(conn, state="dead")
    status, _, page = session.request("/dashboard/actions/requeue", {"task_id": dead})
    assert status == 403 and "CSRF" in page
    status, _, _ = session.request(
        "/dashboard/actions/requeue", {"task_id": dead, "csrf_token": "0" * 64}
    )
    assert status == 403
    assert state_of(conn, dead) == "dead"


def test_requeue_cancel_and_run_now(conn, acting):
    session, csrf = acting
    dead = add_task(conn, state="dead")
    waiting = add_task(conn)
    delayed = add_task(conn, due_in_seconds=3600)
    running = add_task(conn, state="running")

    def act(name: str, **form) -> tuple[int, str]:
        status, head, _ = session.request(
            f"/dashboard/actions/{name}", {**form, "csrf_token": csrf, "next": "/dashboard/tasks"}
        )
        return status, head.get("Location", "")

    assert act("requeue", task_id=dead) == (303, "/dashboard/tasks?done=requeued&n=1")
    assert state_of(conn, dead) == "waiting"
    assert act("cancel", task_id=waiting) == (303, "/dashboard/tasks?done=cancelled&n=1")
    assert state_of(conn, waiting) == "cancelled"
    assert act("cancel", task_id=running)[1].endswith("n=0")  # running: left as it is
    assert state_of(conn, running) == "running"
    assert act("run-now", task_id=delayed)[1].endswith("done=ran-now&n=1")
    assert fetch_all(
        conn,
        "SELECT state, scheduled_for <= now() FROM task_processor.tasks WHERE id = %s",
        (delayed,),
    ) == [("waiting", True)]
    _status, _, page = session.request("/dashboard/tasks?done=cancelled&n=1")
    assert "Cancelled 1 waiting task(s)." in page


def test_requeue_every_dead_task_of_an_identifier(conn, acting):
    session, csrf = acting
    mail = [add_task(conn, "mail.send", "dead") for _ in range(3)]
    other = add_task(conn, "report.build", "dead")
    page = session.request("/dashboard/")[2]
    assert "Requeue 3 dead" in page
    status, _, _ = session.request(
        "/dashboard/actions/requeue-identifier", {"identifier": "mail.send", "csrf_token": csrf}
    )
    assert status == 303
    assert [state_of(conn, task) for task in mail] == ["waiting"] * 3
    assert state_of(conn, other) == "dead"


def test_a_redirect_never_leaves_the_dashboard(conn, acting):
    session, csrf = acting
    dead = add_task(conn, state="dead")
    _, head, _ = session.request(
        "/dashboard/actions/requeue",
        {"task_id": dead, "csrf_token": csrf, "next": "https://evil.example/"},
    )
    assert head["Location"].startswith("/dashboard/?done=requeued")


def test_everything_shown_is_escaped(conn, database_url):
    hostile = "<script>alert('x')</script>"
    task = add_task(
        conn,
        identifier=hostile,
        state="dead",
        args='["<script>document.title=1</script>"]',
        error="Traceback\nValueError: <img src=x onerror=alert(1)>",
    )
    with api_server(database_url) as server:
        session = Session(server)
        pages = [
            session.request(path)[2]
            for path in (
                "/dashboard/",
                "/dashboard/tasks",
                f"/dashboard/tasks/{task}",
                "/dashboard/tasks?identifier=" + "%3Cscript%3E",
            )
        ]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "<script>document" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in pages[2]
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[2]
    # The only script is the dashboard's own file; the policy forbids any other.
    assert re.findall(r"<script[^>]*>", pages[0]) == [
        '<script src="/dashboard/static/dashboard.js" defer>'
    ]


def test_security_headers_and_static_files(database_url):
    with api_server(database_url) as server:
        status, head, _ = server.raw("/dashboard/")
        assert status == 200
        assert "default-src 'none'" in head["Content-Security-Policy"]
        assert head["X-Frame-Options"] == "DENY"
        status, head, body = server.raw("/dashboard/static/dashboard.css")
        assert status == 200 and head["Content-Type"].startswith("text/css")
        assert b"prefers-color-scheme: dark" in body
        assert server.raw("/dashboard/static/../../setup.cfg")[0] == 404


def test_task_list_filters_pages_and_looks_up(conn, database_url):
    ids = [add_task(conn, "bulk.task") for _ in range(60)]
    dead = add_task(conn, "other.task", "dead")
    with api_server(database_url) as server:
        session = Session(server)
        first = session.request("/dashboard/tasks?identifier=bulk.task")[2]
        listed = [int(i) for i in re.findall(r'data-task-id="(\d+)"', first)]
        assert listed == sorted(ids, reverse=True)[:50]
        older = re.search(r'href="([^"]*before=\d+[^"]*)"', first)[1].replace("&amp;", "&")
        second = session.request(older)[2]
        assert [int(i) for i in re.findall(r'data-task-id="(\d+)"', second)] == sorted(
            ids, reverse=True
        )[50:]
        newer = re.search(r'href="([^"]*after=\d+[^"]*)"', second)[1].replace("&amp;", "&")
        back = session.request(newer)[2]
        assert [int(i) for i in re.findall(r'data-task-id="(\d+)"', back)] == listed
        by_state = session.request("/dashboard/tasks?state=dead")[2]
        assert re.findall(r'data-task-id="(\d+)"', by_state) == [str(dead)]
        status, head, _ = session.request(f"/dashboard/tasks/lookup?id={dead}")
        assert status == 303 and head["Location"] == f"/dashboard/tasks/{dead}"
        assert (
            "There is no task 99999999."
            in session.request("/dashboard/tasks/lookup?id=99999999")[2]
        )


def test_task_page_shows_arguments_and_every_attempt(conn, database_url):
    task = add_task(conn, state="dead", args='[1, "two"]')
    with conn.cursor() as cursor:
        for attempt, result, error in (
            (
                1,
                "failure",
                "Traceback (most recent call last):\n  File \"t.py\"\nKeyError: 'first'",
            ),
            (2, "timeout", "killed after its 60 s timeout"),
        ):
            cursor.execute(
                """INSERT INTO task_processor.runs
                (task_id, attempt, worker, started_at, result, error)
                VALUES (%s, %s, 'p/0.1', now(), %s, %s)""",
                (task, attempt, result, error),
            )
    with api_server(database_url) as server:
        status, _, page = Session(server).request(f"/dashboard/tasks/{task}")
    assert status == 200
    assert "Attempts (2)" in page and "KeyError: &#x27;first&#x27;" in page
    assert "killed after its 60 s timeout" in page and "&quot;two&quot;" in page


def test_recurring_tasks_show_their_last_and_next_run(conn, database_url):
    with conn.cursor() as cursor:
        cursor.execute("""
            INSERT INTO task_processor.recurring_tasks
                (identifier, run_every_us, grid_origin, next_run_at, defined_by)
            VALUES ('reports.hourly', 3600000000, now() - interval '2 hours',
                    now() + interval '30 minutes', 'test')""")
        cursor.execute("""
            INSERT INTO task_processor.tasks (identifier, state, recurring_identifier,
                                              recurring_slot, finished_at)
            VALUES ('reports.hourly', 'succeeded', 'reports.hourly',
                    now() - interval '30 minutes', now() - interval '29 minutes')""")
    with api_server(database_url) as server:
        page = Session(server).request("/dashboard/recurring")[2]
    assert "reports.hourly" in page and "1:00:00" in page
    assert "state-succeeded" in page and re.search(r"in (29|30)m", page)
