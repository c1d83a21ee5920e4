"""The processor run the way the deployment files run it, against the test database.

- The image: the entrypoint script with the image's command line, its task code found through
  PYTHONPATH, as PID 1 of a new PID namespace (``unshare --pid --fork --mount-proc``, what a
  container without an init gives it): it reaps orphans and drains on SIGTERM with exit 0; the
  HEALTHCHECK command run inside that namespace (``nsenter``, as ``docker exec`` would).
- docker-compose.yml: its services' commands, environments and healthchecks, run one after the
  other as Compose would start them.
- systemd: the notify protocol with ``WATCHDOG_USEC`` set, on a real datagram socket bound here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from databases import fetch_all
from deploy_files import (ENTRYPOINT_SCRIPT, ROOT, compose_command, compose_environment,
                          compose_probe, compose_service)
from harness import wait_for

TASK_MODULE = Path(__file__).resolve().parents[1] / "support" / "deploy_tasks.py"
# Console scripts are installed next to the interpreter, as in the image's virtualenv.
SCRIPTS = Path(sys.executable).parent
PROCESSOR_OPTIONS = ["--numthreads", "2", "--tasks", "deploy_tasks", "--sleepintervalms", "200",
                     "--drain-timeout", "15"]
WAIT_SECONDS = 20

NAMESPACES_MISSING = (
    "PID namespaces need root and util-linux unshare/nsenter"
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None
    else None)


@pytest.fixture
def namespaces() -> None:
    """PID 1 in a container can only be tried in a PID namespace. Where there is none, the test
    is skipped with a warning in the summary, and fails under CI (which runs as root), so
    that it never stops running there unnoticed."""
    if NAMESPACES_MISSING is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the PID 1 tests: {NAMESPACES_MISSING}")
    warnings.warn(f"PID 1 tests NOT RUN: {NAMESPACES_MISSING}", stacklevel=1)
    pytest.skip(f"NOT RUN: {NAMESPACES_MISSING}")


needs_namespaces = pytest.mark.usefixtures("namespaces")


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """The user's code directory, as mounted or copied under /app in the image."""
    directory = tmp_path / "app"
    directory.mkdir()
    shutil.copy(TASK_MODULE, directory / TASK_MODULE.name)
    return directory


def image_environment(app_dir: Path, database_url: str) -> dict[str, str]:
    """The environment the image gives its processes: PATH, PYTHONPATH, unbuffered output.
    The checkout under test comes after the user's code, as the installed package does in the
    image: the console scripts then run this checkout's code, not whatever is installed."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "TASK_PROCESSOR_"))
           and key not in {"TASK_RUN_METHOD", "ENABLE_TASK_PROCESSOR_HEALTH_CHECK"}}
    env.update(PATH=f"{SCRIPTS}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=os.pathsep.join([str(app_dir), str(ROOT)]),
               PYTHONUNBUFFERED="1", DATABASE_URL=database_url)
    return env


@pytest.fixture
def image_env(app_dir: Path, database_url: str) -> dict[str, str]:
    return image_environment(app_dir, database_url)


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch, database_url: str):
    """The task module, its ``.delay()`` writing to the test database's queue."""
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    import deploy_tasks

    return deploy_tasks


@pytest.fixture
def started() -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts processes in sessions of their own; kills whatever is left at the end."""
    processes: list[subprocess.Popen] = []

    def start(command: list[str], **kwargs: Any) -> subprocess.Popen:
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, **kwargs)
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


def task_state(conn, task_id: int) -> str:
    return fetch_all(conn, "SELECT state FROM task_processor.tasks WHERE id = %s", (task_id,))[0][0]


def idle_workers(conn) -> int:
    return fetch_all(conn, "SELECT count(*) FROM task_processor.workers WHERE state = 'idle'")[0][0]


# -- the image's entrypoint as PID 1 of a PID namespace -------------------------------------

def namespace_pid(host_pid: int) -> int | None:
    """The pid a process has inside its own (innermost) PID namespace; None once it is gone."""
    try:
        status = Path(f"/proc/{host_pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    line = next(line for line in status.splitlines() if line.startswith("NSpid:"))
    return int(line.split()[-1])


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_container(started, image_env: dict[str, str], app_dir: Path) -> tuple[Any, int]:
    """The image's entrypoint with its command line, as PID 1 of a new PID namespace, with the
    user's code directory as working directory. Returns unshare's Popen and the host pid of the
    namespace's PID 1, once the supervisor has replaced the entrypoint script."""
    process = started(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                       str(ENTRYPOINT_SCRIPT), *PROCESSOR_OPTIONS], env=image_env, cwd=app_dir)

    def pid_1() -> int | None:
        for child in descendants(process.pid):
            try:
                if namespace_pid(child.pid) == 1 and "python" in Path(child.exe()).name:
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        return None

    return process, wait_for(pid_1, message="the supervisor to be PID 1 in the namespace")


def exec_in_container(host_pid: int, command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` inside the namespace of ``host_pid``, as ``docker exec`` does."""
    result = subprocess.run(["nsenter", "--target", str(host_pid), "--pid", "--mount", *command],
                            env=env, capture_output=True, text=True, timeout=WAIT_SECONDS)
    return result.returncode


@needs_namespaces
def test_image_runs_tasks_as_pid_1_reports_healthy_and_drains_on_sigterm(
        started, image_env, app_dir, conn, tasks):
    container, supervisor = start_container(started, image_env, app_dir)
    wait_for(lambda: idle_workers(conn) == 2, message="both workers to be idle")
    assert fetch_all(conn, "SELECT pid, state FROM task_processor.processors") == [(1, "running")]
    wait_for(lambda: exec_in_container(supervisor, ["check-health"], image_env) == 0,
             message="the image's HEALTHCHECK command to pass")

    quick = tasks.nap.delay(args=(0,))
    wait_for(lambda: task_state(conn, quick) == "succeeded", message="a task to run")
    slow = tasks.nap.delay(args=(2,))
    wait_for(lambda: task_state(conn, slow) == "running", message="a long task to start")
    os.kill(supervisor, signal.SIGTERM)  # what `docker stop` sends to PID 1 (STOPSIGNAL)

    status, output = wait_exit(container)
    assert status == 0, output
    assert task_state(conn, slow) == "succeeded", "the drain cut the running task short"
    assert fetch_all(conn, "SELECT result FROM task_processor.runs WHERE task_id = %s",
                     (slow,)) == [("success",)]
    assert fetch_all(conn, "SELECT state FROM task_processor.processors") == [("stopped",)]
    unhealthy = subprocess.run(["check-health"], env=image_env, capture_output=True, timeout=30)
    assert unhealthy.returncode == 1, "a stopped processor must fail the HEALTHCHECK"


@needs_namespaces
def test_pid_1_supervisor_reaps_orphans_of_tasks(started, image_env, app_dir, conn, tasks,
                                                  tmp_path):
    container, supervisor = start_container(started, image_env, app_dir)
    wait_for(lambda: idle_workers(conn) == 2, message="both workers to be idle")
    pid_file = tmp_path / "orphan.pid"
    task = tasks.leave_orphan.delay(args=(str(pid_file), 1.5))

    orphan_in_namespace = wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                                   message="the task's grandchild to start")

    def orphan() -> psutil.Process | None:
        for process in descendants(supervisor):
            if str(namespace_pid(process.pid)) == orphan_in_namespace:
                return process
        return None

    grandchild = wait_for(orphan, message="the grandchild among the supervisor's descendants")
    wait_for(lambda: grandchild.ppid() == supervisor,
             message="the orphan to be re-parented to PID 1")
    wait_for(lambda: not grandchild.is_running(),
             message="PID 1 to reap the orphan after it exits")
    assert task_state(conn, task) == "succeeded"
    zombies = [process.pid for process in descendants(supervisor)
               if is_zombie(process)]
    assert zombies == [], f"zombies left in the namespace: {zombies}"

    os.kill(supervisor, signal.SIGTERM)
    status, output = wait_exit(container)
    assert status == 0, output


def test_entrypoint_runs_a_named_command_instead_of_the_processor(image_env, database_url):
    """`docker run IMAGE check-health`: with no processor ever started here it is unhealthy."""
    result = subprocess.run([str(ENTRYPOINT_SCRIPT), "check-health"], env=image_env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "no task processor" in result.stdout


def test_entrypoint_reports_a_configuration_error_with_exit_78(image_env, app_dir):
    """A task module that cannot be imported must stop restarts (RestartPreventExitStatus)."""
    result = subprocess.run([str(ENTRYPOINT_SCRIPT), "--tasks", "no_such_module_here"],
                            env=image_env, cwd=app_dir, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 78, result.stderr
    assert "no_such_module_here" in result.stderr


# -- docker-compose.yml without Docker ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def passes(command: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode == 0


def get_json(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_compose_services_start_and_work_together(started, app_dir, empty_database_url):
    """migrate, then api and processor, with the file's commands, environments and probes; the
    database URL and the API's address are the only values changed for the test."""
    shutil.copytree(ROOT / "examples", app_dir / "examples")  # the ./examples:/app/examples mount

    def service_env(name: str) -> dict[str, str]:
        environment = compose_environment(compose_service(name))
        environment["DATABASE_URL"] = empty_database_url
        return {**image_environment(app_dir, empty_database_url), **environment}

    migrate = subprocess.run([str(ENTRYPOINT_SCRIPT), *compose_command("migrate")], cwd=app_dir,
                             env=service_env("migrate"), capture_output=True, text=True,
                             timeout=60)
    assert migrate.returncode == 0, migrate.stderr

    port = free_port()

    def local(words: list[str]) -> list[str]:
        return [word.replace("0.0.0.0:8000", f"127.0.0.1:{port}")
                .replace("127.0.0.1:8000", f"127.0.0.1:{port}") for word in words]

    api = started([str(ENTRYPOINT_SCRIPT), *local(compose_command("api"))], cwd=app_dir,
                  env=service_env("api"))
    wait_for(lambda: passes(local(compose_probe("api")), service_env("api")),
             message="the api's healthcheck to pass")

    processor_env = {**service_env("processor"), "TASK_PROCESSOR_NUM_THREADS": "2",
                     "EXAMPLE_GREETINGS_FILE": str(app_dir / "greetings.log")}
    processor = started([str(ENTRYPOINT_SCRIPT), *compose_command("processor")], cwd=app_dir,
                        env=processor_env)
    wait_for(lambda: passes(compose_probe("processor"), processor_env),
             message="the processor's healthcheck to pass")

    status, health = get_json(f"http://127.0.0.1:{port}/health?format=json")
    assert status == 200
    assert health == {"database": "working", "task_processor": "working"}, \
        "the round trip from the API through the processor failed"
    # The processor's own start-up tasks may still be queued a moment after the round trip.
    def nothing_waiting() -> bool:
        status, monitoring = get_json(f"http://127.0.0.1:{port}/processor/monitoring")
        return status == 200 and monitoring["waiting"] == 0
    wait_for(nothing_waiting, message="monitoring to report nothing waiting")

    for process in (processor, api):
        process.send_signal(signal.SIGTERM)
        status, output = wait_exit(process)
        assert status == 0, output


# -- systemd notify protocol ---------------------------------------------------------------------

def receive(sock: socket.socket) -> tuple[int, dict[str, str]] | None:
    """One notification: the sender's pid (from the kernel) and its KEY=value lines; None when
    nothing came within the socket's timeout."""
    credentials = struct.calcsize("3i")
    try:
        data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(credentials))
    except TimeoutError:
        return None
    sender = next(struct.unpack("3i", payload[:credentials])[0]
                  for level, kind, payload in ancillary
                  if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
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
    gaps = sorted(later - earlier for earlier, later in zip(pings, pings[1:]))
    assert gaps[len(gaps) // 2] < watchdog_usec / 1e6, f"pings too rare for the watchdog: {gaps}"

    processor.send_signal(signal.SIGTERM)
    wait_for(lambda: "STOPPING" in next_message(), message="STOPPING=1")
    status, output = wait_exit(processor)
    assert status == 0, output
    assert any("STATUS" in fields for _, _, fields in messages)
    senders = {sender for _, sender, _ in messages}
    assert senders == {processor.pid}, "only the main process may notify (NotifyAccess=main)"
