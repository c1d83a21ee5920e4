"""Helpers of the dashboard tests: a browser-like HTTP session (cookies, forms) against a real
run-api, and tasks put in the states a test needs.

(Not a test module: it holds no tests.)
"""

from __future__ import annotations

import re
from html import unescape
from http.cookies import SimpleCookie
from urllib.parse import urlencode

from databases import fetch_all

DASHBOARD_TOKEN = "act-token-123"
MONITORING_TOKEN = "read-token-456"


def add_task(
    conn,
    identifier: str = "mail.send",
    state: str = "waiting",
    due_in_seconds: float = -1,
    args: str = "[]",
    error: str | None = None,
) -> int:
    finished = "now()" if state in ("succeeded", "dead", "cancelled") else "NULL"
    return fetch_all(
        conn,
        f"""
        INSERT INTO task_processor.tasks (identifier, state, scheduled_for, args, last_error,
                                          finished_at, attempts)
        VALUES (%s, %s, now() + make_interval(secs => %s), %s, %s, {finished},
                CASE WHEN %s = 'dead' THEN 3 ELSE 0 END)
        RETURNING id""",
        (identifier, state, due_in_seconds, args, error, state),
    )[0][0]


def state_of(conn, task_id: int) -> str:
    return fetch_all(conn, "SELECT state FROM task_processor.tasks WHERE id = %s", (task_id,))[0][0]


class Session:
    """Keeps the cookies a server sets, like a browser, and reads forms out of pages."""

    def __init__(self, server) -> None:
        self.server = server
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    def request(self, path: str, form: dict | None = None) -> tuple[int, dict, str]:
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if form is not None:
            data = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        status, head, body = self.server.raw(
            path, headers, "POST" if form is not None else "GET", data
        )
        for name, value in head.items():
            if name.lower() == "set-cookie":
                self.set_cookie_headers.append(value)
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                for key, morsel in jar.items():
                    if morsel.value:
                        self.cookies[key] = morsel.value
                    else:
                        self.cookies.pop(key, None)
        return status, head, body.decode("utf-8")

    def login(self, token: str) -> int:
        status, _, page = self.request("/dashboard/login")
        assert status == 200, page
        nonce = hidden(page, "login_nonce")
        return self.request("/dashboard/login", {"token": token, "login_nonce": nonce})[0]


def hidden(page: str, name: str) -> str:
    """The value of the first hidden field called ``name``."""
    match = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert match, f"no field {name} in the page"
    return unescape(match[1])
