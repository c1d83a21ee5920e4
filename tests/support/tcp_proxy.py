"""A TCP forwarder between the processor and PostgreSQL, to take the database away and give
it back: ``cut()`` closes every connection and refuses new ones, ``restore()`` listens again
on the same port, and ``drop_replies()`` loses whatever the server sends from then on, as a
network that fails at the wrong moment does. Real sockets throughout."""

from __future__ import annotations

import socket
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from databases import ADMIN_URL


def server_address() -> tuple[str, int] | str:
    """Where the test server listens: (host, port), or the path of its Unix socket."""
    parts = urlsplit(ADMIN_URL)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "127.0.0.1"
    port = int(parts.port or query.get("port") or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _connect(address: tuple[str, int] | str) -> socket.socket:
    if isinstance(address, str):
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unix.connect(address)
        except OSError:
            unix.close()
            raise
        return unix
    return socket.create_connection(address)


class TcpProxy:
    def __init__(self, upstream: tuple[str, int] | str | None = None) -> None:
        self.upstream = upstream or server_address()
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._dropping = threading.Event()
        self.restore()

    def drop_replies(self) -> None:
        self._dropping.set()

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(database_url)
        user = f"{parts.username}@" if parts.username else ""
        query = urlencode(
            [(key, value) for key, value in parse_qsl(parts.query) if key not in ("host", "port")]
        )
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}", query=query))

    def restore(self) -> None:
        self._dropping.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in [listener, *sockets]:
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = _connect(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for source, target, replies in ((client, server, False), (server, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, target, replies), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if not (replies and self._dropping.is_set()):
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
