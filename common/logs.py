"""Logging set-up: once per process, and a worker keeps its supervisor's, under its own name.

Both formats pass every line through :func:`common.redaction.scrub`: a log record can quote a
driver's message, an exception or a value that carries a password.
"""

from __future__ import annotations

import json
import logging
import sys

from common import redaction

_role = ""  # what this process is, in its text log lines: "supervisor", "worker 3", "api"


class TextFormatter(logging.Formatter):
    """The usual one-line format, scrubbed of secrets (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        record.role_prefix = f"[{_role} {record.process}] " if _role else ""
        return redaction.scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers, scrubbed of secrets."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(redaction.scrub_data(entry))


def configure(level: str = "INFO", fmt: str = "text", role: str = "") -> None:
    """Send log records to stderr, replacing whatever handlers the parent process had."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s %(role_prefix)s%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    set_role(role)


def set_role(role: str) -> None:
    """Name this process in its log lines from now on. A forked worker calls only this: it
    keeps the handler it inherited rather than build logging objects of its own, each of which
    would copy pages of the heap it shares with the supervisor."""
    global _role
    _role = role


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """An error's text on one line (its type's name if it has none), cut at ``limit``
    characters: what log lines and one-line messages show."""
    text = " ".join(str(error).split()) or (
        type(error).__name__ if isinstance(error, BaseException) else ""
    )
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
