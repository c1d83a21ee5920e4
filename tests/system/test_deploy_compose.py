"""docker-compose.yml for real: its services started with podman in Compose's order, each once
its dependencies' conditions hold (tests/deploy_compose.py), then used; and the postgres
service's healthcheck against a server in the state the official image's initialisation leaves
it in for a while (listening on its Unix socket only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_compose import Substitutions, host_probe, is_healthy, start_order, up
from deploy_files import compose, compose_probe
from deploy_podman import SET_UP_TIMEOUT
from harness import query, wait_for

WAIT_SECONDS = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.timeout(SET_UP_TIMEOUT)
def test_compose_services_start_in_order_and_work_together(
    images, containers, empty_database_url, monkeypatch
):
    assert start_order(compose()["services"]) in (
        ["postgres", "migrate", "api", "processor"],
        ["postgres", "migrate", "processor", "api"],
    )
    port = free_port()
    stack = up(
        containers,
        Substitutions(empty_database_url, port, images.app),
        wait_for,
        timeout=WAIT_SECONDS,
    )
    podman = images.podman
    assert podman.inspect(stack.container("migrate"), "{{.State.ExitCode}}") == "0"
    for name in ("api", "processor"):  # `docker compose up --wait`
        wait_for(
            lambda name=name: is_healthy(stack, name),
            timeout=WAIT_SECONDS,
            message=f"{name} to be healthy",
        )

    # The API enqueues on the processor and sees it run the probe task; so do we.
    health = get_json(f"http://127.0.0.1:{port}/health?format=json")
    assert health == {"database": "working", "task_processor": "working"}, health
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    from examples import tasks

    greeting = tasks.greet.delay(args=("compose",))
    wait_for(
        lambda: (
            query(
                empty_database_url,
                "SELECT state FROM task_processor.tasks WHERE id = %s",
                (greeting,),
            )
            == [("succeeded",)]
        ),
        timeout=WAIT_SECONDS,
        message="the processor to run an example task",
    )
    assert get_json(f"http://127.0.0.1:{port}/processor/monitoring")["waiting"] == 0

    # `docker compose stop`: each container within its stop_grace_period, exit 0.
    for name in ("processor", "api"):
        podman.run("stop", stack.container(name), timeout=90)
        assert podman.inspect(stack.container(name), "{{.State.ExitCode}}") == "0", podman.run(
            "logs", stack.container(name)
        ).stderr


# -- the postgres service's probe -------------------------------------------------------------

POSTGRES_BIN = (
    Path(
        subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        or "/nonexistent"
    )
    if shutil.which("pg_config")
    else None
)


def why_no_private_server() -> str | None:
    if os.geteuid() != 0:
        return "a server in a network namespace of its own needs root"
    for command in ("unshare", "nsenter", "runuser", "ip", "pg_isready"):
        if shutil.which(command) is None:
            return f"{command} is not installed"
    if POSTGRES_BIN is None or not (POSTGRES_BIN / "postgres").exists():
        return "PostgreSQL's server programs are not installed"
    return None


class PrivateServer:
    """A PostgreSQL server in network and mount namespaces of its own (nothing of the host's
    on its 127.0.0.1:5432 or in its socket directory), started the way the official image's
    entrypoint starts its servers."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "sleep", "300"]
        )
        own = os.readlink("/proc/self/ns/net")
        wait_for(
            lambda: os.readlink(f"/proc/{self.holder.pid}/ns/net") != own,
            message="the private namespaces",
        )
        self.inside("ip", "link", "set", "lo", "up")
        self.inside("mount", "-t", "tmpfs", "tmpfs", "/var/run/postgresql")
        self.inside("chown", "postgres", "/var/run/postgresql")
        self.as_postgres(
            str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"
        )

    def inside(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "--target", str(self.holder.pid), "--net", "--mount", *command],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def as_postgres(self, *command: str) -> None:
        result = self.inside("runuser", "-u", "postgres", "--", *command)
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self, listen_addresses: str) -> None:
        self.as_postgres(
            str(POSTGRES_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.data.parent / "server.log"),
            "-o",
            f"-c listen_addresses='{listen_addresses}' -p 5432"
            " -c unix_socket_directories=/var/run/postgresql",
            "start",
        )

    def stop(self) -> None:
        self.as_postgres(
            str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop"
        )

    def probe(self, command: list[str]) -> int:
        return self.inside(*command).returncode

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.inside(
                "runuser",
                "-u",
                "postgres",
                "--",
                str(POSTGRES_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            )
        self.holder.send_signal(signal.SIGKILL)
        self.holder.wait()


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    reason = why_no_private_server()
    if reason:
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="tp-pg-"))
    shutil.chown(directory, "postgres", "postgres")
    server = None
    try:
        server = PrivateServer(directory / "data")
        yield server
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(directory)


def test_the_postgres_probe_waits_for_tcp_not_for_the_initialising_socket_only_server(
    private_server,
):
    probe = host_probe(compose()["services"]["postgres"])
    assert probe == compose_probe("postgres")
    host = probe.index("-h") if "-h" in probe else len(probe)
    socket_probe = probe[:host] + probe[host + 2 :]  # the probe without -h: the socket's

    private_server.start(listen_addresses="")  # the official image's temporary server
    assert private_server.probe(socket_probe) == 0, "the socket probe passes too early"
    assert private_server.probe(probe) != 0, "the probe passed with TCP refused"
    private_server.stop()

    private_server.start(listen_addresses="127.0.0.1")  # the real server
    assert private_server.probe(probe) == 0
