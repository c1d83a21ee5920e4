"""The systemd notify protocol (``sd_notify``), spoken directly on ``NOTIFY_SOCKET``.

Each message is one datagram of ``KEY=value`` lines. Without ``NOTIFY_SOCKET`` every call is a
no-op, so the processor runs the same under systemd, in a container or in a terminal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

logger = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd, and knows the watchdog interval it asked for."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        self.watchdog_interval = self._watchdog_interval(environ)

    @staticmethod
    def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
        """Half of ``WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
        usec = environ.get("WATCHDOG_USEC")
        watchdog_pid = environ.get("WATCHDOG_PID")
        if not usec or (watchdog_pid and watchdog_pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            logger.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
            return None

    def notify(self, *lines: str) -> None:
        """Send ``lines`` as one message; failures are logged, never raised."""
        if self._address is None:
            return
        try:
            if self._socket is None:
                import socket  # under systemd only: no process of the tree carries it otherwise

                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as error:
            logger.warning("could not notify systemd at %r: %s", self._address, error)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1", "STATUS=reloading configuration")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
