"""gunicorn, set up for ``run-api``: threads in a few pre-forked processes, bounded reads.

gunicorn's ``gthread`` worker serves each request in a thread of a pre-forked process (the
model our own supervisor follows: an arbiter that replaces dead workers). It answers bytes it
cannot parse with a ``400`` and closes the connection. What it does not bound is a client that
sends part of a request and then nothing: the thread blocks reading it. The listening sockets
therefore carry ``SO_RCVTIMEO``/``SO_SNDTIMEO``, which every accepted connection inherits from
them (Linux copies the options at accept): a read or write that makes no progress for
``request_timeout`` seconds fails and the connection is closed.
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

logger = logging.getLogger("api.server")


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    workers: int = 2
    threads: int = 8
    request_timeout: float = 10.0

    @property
    def bind(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class ProcessLogging(glogging.Logger):
    """gunicorn's error and access lines through this process's logging (text or JSON), under
    the names ``api.server`` and ``api.access``, instead of handlers of gunicorn's own."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.error_log = logging.getLogger("api.server")
        self.access_log = logging.getLogger("api.access")

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """A read or write that timed out is a client gone quiet, not an error worth a
        traceback: one line says so."""
        if isinstance(sys.exc_info()[1], BlockingIOError):
            self.error_log.info(
                "closed a connection whose client sent or read nothing for the request timeout"
            )
            return
        super().exception(msg, *args, **kwargs)


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def bound_address(arbiter: Any) -> str:
    """``http://HOST:PORT`` of the first listening socket (the port chosen for port 0)."""
    host, port = arbiter.LISTENERS[0].sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class GunicornServer(BaseApplication):
    """Serve one WSGI application object (already built and checked by the caller)."""

    def __init__(self, application: Any, settings: ServerSettings, on_ready: Any = None) -> None:
        self.application = application
        self.settings = settings
        self.on_ready = on_ready
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        for key, value in {
            "bind": [settings.bind],
            "workers": settings.workers,
            "threads": settings.threads,
            "worker_class": "gthread",
            # One worker's main loop beats for all its threads; it is silent only when stuck.
            "timeout": 30,
            "graceful_timeout": 10,
            "keepalive": 2,
            "preload_app": True,
            "proc_name": "task-processor api",
            "accesslog": "-",
            "logger_class": ProcessLogging,
            # Several run-api processes on one host must not share a control socket.
            "control_socket_disable": True,
            "when_ready": self._when_ready,
        }.items():
            self.cfg.set(key, value)

    def _when_ready(self, arbiter: Any) -> None:
        timeout = _timeval(self.settings.request_timeout)
        for listener in arbiter.LISTENERS:
            listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
            listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        if self.on_ready is not None:
            self.on_ready(bound_address(arbiter))

    def load(self) -> Any:
        return self.application
