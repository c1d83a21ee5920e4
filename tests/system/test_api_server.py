"""``run-api`` on gunicorn, over raw sockets: bursts of clients, clients that stop sending,
and bytes that are not HTTP."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from api_support import api_server


def exchange(base: str, payload: bytes, timeout: float = 60) -> bytes:
    """Send ``payload`` on a new connection; return every byte until the server closes it."""
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as raw:
        raw.sendall(payload)
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    return received


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of an HTTP/1.1 response; fails on anything else."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"no end of headers in {raw[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {
        name.lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    return int(status), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)),
            id="tls-client-hello",
        ),
        pytest.param(b'GET "/health HTTP/1.1\r\nHost: test\r\n\r\n', id="quote-before-path"),
        pytest.param(b'GET /health"\r\n\r\n', id="quote-and-no-version"),
        pytest.param(b"\x00\xff not http\r\n\r\n", id="binary"),
        pytest.param(b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n", id="line-too-long"),
    ],
)
def test_bytes_the_server_cannot_parse_get_a_status_line_and_a_whole_body(database_url, payload):
    with api_server(database_url) as server:
        answer = exchange(server.base, payload)
        assert server.get("/health")[0] == 200  # the server is still serving
    assert answer, "the connection was closed without an answer"
    status, headers, body = split_response(answer)
    assert 400 <= status < 500
    assert int(headers["content-length"]) == len(body) > 0


def test_a_client_that_sends_half_a_request_is_cut_off_and_frees_its_thread(database_url):
    settings = {
        "TASK_PROCESSOR_API_WORKERS": "1",
        "TASK_PROCESSOR_API_THREADS": "1",
        "TASK_PROCESSOR_API_REQUEST_TIMEOUT": "2",
    }
    with api_server(database_url, **settings) as server:
        address = urlsplit(server.base)
        with socket.create_connection((address.hostname, address.port), timeout=60) as half:
            half.sendall(b"GET /health HTTP/1.1\r\nHost: te")  # ... and nothing more
            started = time.monotonic()
            # The only thread is held by the half request until the timeout cuts it off; then
            # this request is served.
            status, _, _ = split_response(exchange(server.base, get("/health")))
            assert status == 200
            assert half.recv(1024) == b""  # closed by the server, without an answer
            assert time.monotonic() - started >= 1.5  # cut by the timeout, not at once
        assert any("sent or read nothing" in line for line in server.log)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/health", "/dashboard/"])
def test_500_concurrent_requests_are_all_answered(database_url, path):
    clients = 500
    answers: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(clients)

    def client() -> None:
        try:
            start.wait(60)
            answers.append(split_response(exchange(server.base, get(path), timeout=120))[0])
        except BaseException as error:
            errors.append(error)

    with api_server(database_url) as server:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    assert not errors, f"{len(errors)} of {clients} failed, e.g. {errors[0]!r}"
    assert answers == [200] * clients
