"""Who may see the dashboard and who may act on it.

Three levels: none, read, act. ``TASK_PROCESSOR_DASHBOARD_TOKEN`` gives *act* (reading and
every action); ``TASK_PROCESSOR_MONITORING_TOKEN`` gives *read*. Without a token a request may
read only when run-api listens on a loopback address; otherwise the dashboard is closed.

The login form trades a token for a session cookie (HttpOnly, SameSite=Strict, 12 hours). The
cookie is signed with a key derived from the token it was made from, so it is valid in every
server process and across restarts, and changing the token ends every session. Each action is a
POST carrying a CSRF token derived from the session cookie with the same key; a page from
another site can neither read it nor have the browser send the cookie.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from http.cookies import CookieError, SimpleCookie

from api.settings import ApiSettings

SESSION_COOKIE = "tp_dashboard_session"
LOGIN_COOKIE = "tp_dashboard_login"
SESSION_SECONDS = 12 * 3600


class Access(enum.IntEnum):
    NONE = 0
    READ = 1
    ACT = 2


def _key(token: str) -> bytes:
    return hashlib.sha256(b"task-processor dashboard\0" + token.encode("utf-8")).digest()


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("ascii"), hashlib.sha256).hexdigest()


def cookies(environ: dict) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


class Gate:
    """The dashboard's access rules for one set of settings."""

    def __init__(self, settings: ApiSettings) -> None:
        self.tokens = {
            level: token
            for level, token in (
                (Access.ACT, settings.dashboard_token),
                (Access.READ, settings.monitoring_token),
            )
            if token
        }
        self.open_for_reading = settings.loopback_only

    @property
    def closed(self) -> bool:
        """No token configured and not on loopback: nobody may see anything."""
        return not self.tokens and not self.open_for_reading

    def level_of_token(self, given: str) -> Access:
        """The access a token gives (compared in constant time)."""
        found = Access.NONE
        for level, token in self.tokens.items():
            if hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
                found = max(found, level)
        return found

    def session_cookie(self, level: Access, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_SECONDS)
        message = f"{level.name.lower()}.{expires}"
        return f"{message}.{_sign(_key(self.tokens[level]), message)}"

    def session_level(self, value: str, now: float | None = None) -> Access:
        name, _, rest = value.partition(".")
        expires, _, signature = rest.partition(".")
        level = {"read": Access.READ, "act": Access.ACT}.get(name)
        if level is None or level not in self.tokens or not expires.isdigit():
            return Access.NONE
        if int(expires) < (now or time.time()):
            return Access.NONE
        expected = _sign(_key(self.tokens[level]), f"{name}.{expires}")
        return level if hmac.compare_digest(signature, expected) else Access.NONE

    def access(self, environ: dict) -> tuple[Access, str | None]:
        """(level, session cookie value or None) of a request."""
        session = cookies(environ).get(SESSION_COOKIE)
        level = self.session_level(session) if session else Access.NONE
        if level is Access.NONE:
            session = None
            if self.open_for_reading:
                level = Access.READ
        return level, session

    def csrf_token(self, session: str) -> str:
        """The token every POST form carries: only a holder of the (valid) session can know
        it."""
        level = self.session_level(session)
        return _sign(_key(self.tokens[level]), "csrf." + session)

    def csrf_valid(self, session: str | None, given: str) -> bool:
        if session is None or self.session_level(session) is Access.NONE:
            return False
        return hmac.compare_digest(
            given.encode("utf-8", "replace"), self.csrf_token(session).encode("ascii")
        )


def new_login_nonce() -> str:
    """The login form's double-submit value (a cookie and a hidden field must match)."""
    return secrets.token_urlsafe(24)
