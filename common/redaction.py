"""Secrets kept out of everything the project prints.

:func:`scrub` is the one function that every printer uses: configuration errors on stderr,
both log formats, Sentry's ``before_send``, HTTP responses, ``check-health`` and the process
title. It replaces with ``***`` every secret the process knows of, wherever it appears in the
text, because the driver's own messages can quote any part of a connection string (libpq
reads ``postgresql://u:p@ss@host/db`` as host ``ss@host``, and says so when that host does
not resolve). The secrets it knows:

- every database URL given to the configuration or to :func:`common.db.connect`, and those in
  ``DATABASE_URL`` and ``TASK_PROCESSOR_DATABASE_URL``: their password as written, percent-
  decoded, as libpq reads it, and each part of one written with an unencoded ``@``;
- ``PGPASSWORD``, ``TASK_PROCESSOR_MONITORING_TOKEN`` and the key of the Sentry DSN.

Text that quotes a URL this process was never given (a mistyped config-file key) still has
the password of that URL masked by its shape: ``scheme://user:***@`` and ``password=***``.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg2.extensions
import setproctitle

MASK = "***"
# Shorter values are masked only where they stand as a password in a URL: replacing one or two
# characters everywhere would garble every message and hide nothing of worth.
MIN_SECRET_LENGTH = 3
DATABASE_VARIABLES = ("DATABASE_URL", "TASK_PROCESSOR_DATABASE_URL")
TOKEN_VARIABLES = ("PGPASSWORD", "TASK_PROCESSOR_MONITORING_TOKEN")

_URL_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)(\S*)@")
_PASSWORD_PARAMETER = re.compile(
    r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s'\"]+)", re.IGNORECASE
)

_remembered: set[str] = set()
_remembered_urls: set[str] = set()
_from_environment: tuple[tuple[str | None, ...], frozenset[str]] = ((), frozenset())


def database_secrets(url: str) -> set[str]:
    """The password of a database URL or keyword/value string, in every form it may be
    printed in."""
    found: set[str] = set()
    if "://" in url:
        netloc = url.split("://", 1)[1]
        netloc = re.split(r"[/?#]", netloc, maxsplit=1)[0]
        userinfo = netloc.rpartition("@")[0]
        if ":" in userinfo:
            written = userinfo.split(":", 1)[1]
            found |= {written, unquote(written), *written.split("@")}
        try:
            query = urlsplit(url).query
        except ValueError:
            query = ""
        found |= {value for key, value in parse_qsl(query) if key == "password"}
    try:
        password = psycopg2.extensions.parse_dsn(url).get("password")
    except psycopg2.ProgrammingError:
        password = None
    if password:
        found.add(password)
    return {secret for secret in found if secret}


def sentry_secrets(dsn: str) -> set[str]:
    """The key (and the legacy secret key) of a Sentry DSN."""
    try:
        parts = urlsplit(dsn)
        return {secret for secret in (parts.username, parts.password) if secret}
    except ValueError:
        return set()


def remember(*secrets: str) -> None:
    """Add values that must never be printed."""
    _remembered.update(secret for secret in secrets if secret)


def remember_database(url: str) -> None:
    """Remember the secrets of a database URL, once per URL: a worker connects with the URL
    its supervisor remembered before the fork, and parsing it again would copy the pages of
    every object the parsers touch (bench/memory.py)."""
    if url not in _remembered_urls:
        remember(*database_secrets(url))
        _remembered_urls.add(url)


def remember_sentry_dsn(dsn: str) -> None:
    remember(*sentry_secrets(dsn))


def known_secrets() -> list[str]:
    """Every secret known now, longest first (so that a part never masks half a whole)."""
    secrets = _remembered | _environment_secrets()
    return sorted((s for s in secrets if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def _environment_secrets() -> frozenset[str]:
    """Secrets in the environment, read again only when it changed."""
    global _from_environment
    values = tuple(
        os.environ.get(name) for name in (*DATABASE_VARIABLES, *TOKEN_VARIABLES, "SENTRY_DSN")
    )
    if values != _from_environment[0]:
        *urls, password, token, sentry_dsn = values
        secrets = {secret for secret in (password, token) if secret}
        for url in urls:
            if url:
                secrets |= database_secrets(url)
        if sentry_dsn:
            secrets |= sentry_secrets(sentry_dsn)
        _from_environment = (values, frozenset(secrets))
    return _from_environment[1]


def scrub(text: str) -> str:
    """``text`` with every known secret, and the password of every URL in it, masked."""
    for secret in known_secrets():
        text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(
        lambda match: match[0] if match[2] in ("PASSWORD", MASK) else f"{match[1]}{MASK}@", text
    )
    return _PASSWORD_PARAMETER.sub(
        lambda match: match[0] if match[2] in ("PASSWORD", MASK) else f"{match[1]}{MASK}", text
    )


def scrub_data(value: Any) -> Any:
    """A copy of ``value`` (JSON-like: dicts, lists, tuples, strings) with every string,
    keys included, scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_data(key): scrub_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_data(item) for item in value)
    return value


def hide_command_line() -> None:
    """Rewrite the process title (``ps``, ``/proc/<pid>/cmdline``) when the command line
    carries a secret, such as ``--database-url postgresql://app:PASSWORD@...``."""
    shown = " ".join(sys.argv)
    hidden = scrub(shown)
    if hidden != shown:
        setproctitle.setproctitle(hidden)
