"""The processor run the way the deployment files run it, against the test database, without
a container engine (fast; the image, Compose and systemd run for real in the slow tests
tests/test_deploy_image.py, tests/test_deploy_compose.py and tests/test_deploy_systemd.py):

- the image's entrypoint script, choosing the command from its arguments;
- the systemd notify protocol with ``WATCHDOG_USEC`` set, on a real datagram socket bound here.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from deploy_files import ENTRYPOINT_SCRIPT
from harness import wait_for

TASK_MODULE = Path(__file__).resolve().parents[1] / "support" / "deploy_tasks.py"
# Console scripts are installed next to the interpreter, as in the image's virtualenv.
SCRIPTS = Path(sys.executable).parent
PROCESSOR_OPTIONS = [
    "--numthreads",
    "2",
    "--tasks",
    "deploy_tasks",
    "--sleepintervalms",
    "200",
    "--drain-timeout",
    "15",
]
WAIT_SECONDS = 20


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """The user's code directory, as mounted or copied under /app in the image."""
    directory = tmp_path / "app"
    directory.mkdir()
    shutil.copy(TASK_MODULE, directory / TASK_MODULE.name)
    return directory


def image_environment(app_dir: Path, database_url: str) -> dict[str, str]:
    """The environment the image gives its processes: PATH, PYTHONPATH, unbuffered output."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "TASK_PROCESSOR_"))
        and key not in {"TASK_RUN_METHOD", "ENABLE_TASK_PROCESSOR_HEALTH_CHECK"}
    }
    env.update(
        PATH=f"{SCRIPTS}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(app_dir),
        PYTHONUNBUFFERED="1",
        DATABASE_URL=database_url,
    )
    return env


@pytest.fixture
def image_env(app_dir: Path, database_url: str) -> dict[str, str]:
    return image_environment(app_dir, database_url)


@pytest.fixture
def started() -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts processes in sessions of their own; kills whatever is left at the end."""
    processes: list[subprocess.Popen] = []

    def start(command: list[str], **kwargs: Any) -> subprocess.Popen:
        process = subprocess.Popen(
            command,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kwargs,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=WAIT_SECONDS)
        if process.stdout:
            process.stdout.close()


def wait_exit(process: subprocess.Popen) -> tuple[int, str]:
    """The exit status and the whole output of a process that was asked to stop."""
    try:
        output, _ = process.communicate(timeout=WAIT_SECONDS + 15)
    except subprocess.TimeoutExpired:
        pytest.fail("the processor did not exit after SIGTERM")
    return process.returncode, output


# -- the image's entrypoint script ---------------------------------------------------------------


def test_entrypoint_runs_a_named_command_instead_of_the_processor(image_env, database_url):
    """`docker run IMAGE check-health`: with no processor ever started here it is unhealthy."""
    result = subprocess.run(
        [str(ENTRYPOINT_SCRIPT), "check-health"],
        env=image_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "no task processor" in result.stdout


def test_entrypoint_reports_a_configuration_error_with_exit_78(image_env, app_dir):
    """A task module that cannot be imported must stop restarts (RestartPreventExitStatus)."""
    result = subprocess.run(
        [str(ENTRYPOINT_SCRIPT), "--tasks", "no_such_module_here"],
        env=image_env,
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78, result.stderr
    assert "no_such_module_here" in result.stderr


# -- systemd notify protocol ---------------------------------------------------------------------


def receive(sock: socket.socket) -> tuple[int, dict[str, str]] | None:
    """One notification: the sender's pid (from the kernel) and its KEY=value lines; None when
    nothing came within the socket's timeout."""
    credentials = struct.calcsize("3i")
    try:
        data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(credentials))
    except TimeoutError:
        return None
    sender = next(
        struct.unpack("3i", payload[:credentials])[0]
        for level, kind, payload in ancillary
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    )
    lines = data.decode().splitlines()
    return sender, dict(line.split("=", 1) for line in lines)


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where systemd's would be; the kernel tells each sender's pid."""
    directory = tempfile.mkdtemp(prefix="tp-notify-")  # short: socket paths have a 108-byte limit
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(path)
    sock.settimeout(1)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory)


def test_sd_notify_ready_watchdog_status_and_stopping(started, image_env, notify_socket, conn):
    sock, path = notify_socket
    watchdog_usec = 2_000_000
    env = {**image_env, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(watchdog_usec)}
    processor = started([str(SCRIPTS / "run-task-processor"), *PROCESSOR_OPTIONS], env=env)
    messages: list[tuple[float, int, dict[str, str]]] = []

    def next_message() -> dict[str, str]:
        received = receive(sock)
        if received is None:
            return {}
        messages.append((time.monotonic(), *received))
        return received[1]

    wait_for(lambda: "READY" in next_message(), message="READY=1")
    ready_at, _, ready = messages[-1]
    assert ready["READY"] == "1"
    assert len(psutil.Process(processor.pid).children()) == 2, "READY=1 before the workers"

    def pings_after_ready() -> list[float]:
        return [at for at, _, fields in messages if fields.get("WATCHDOG") == "1" and at > ready_at]

    def four_pings() -> bool:
        next_message()
        return len(pings_after_ready()) >= 4

    wait_for(four_pings, message="four WATCHDOG=1 pings")
    pings = pings_after_ready()
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(pings))
    assert gaps[len(gaps) // 2] < watchdog_usec / 1e6, f"pings too rare for the watchdog: {gaps}"

    processor.send_signal(signal.SIGTERM)
    wait_for(lambda: "STOPPING" in next_message(), message="STOPPING=1")
    status, output = wait_exit(processor)
    assert status == 0, output
    assert any("STATUS" in fields for _, _, fields in messages)
    senders = {sender for _, sender, _ in messages}
    assert senders == {processor.pid}, "only the main process may notify (NotifyAccess=main)"
