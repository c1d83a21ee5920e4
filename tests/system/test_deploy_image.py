"""The image, built with podman from the unchanged Dockerfile and run against the test database
on the host's PostgreSQL (host networking): what docs/operations.md promises of it.

The base image and the build are made once per run (tests/support/deploy_podman.py); these
tests skip, saying why, where podman cannot run (and fail instead under CI).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import psutil
import pytest
from databases import fetch_all
from deploy_podman import SET_UP_TIMEOUT, Images
from harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SET_UP_TIMEOUT)]

TASK_MODULE = Path(__file__).resolve().parents[1] / "support" / "deploy_tasks.py"
# A short grace period, so that a frozen supervisor fails the HEALTHCHECK within seconds.
PROCESSOR_OPTIONS = (
    "--numthreads",
    "2",
    "--tasks",
    "deploy_tasks",
    "--sleepintervalms",
    "200",
    "--graceperiodms",
    "3000",
    "--drain-timeout",
    "15",
)
IMAGE_USER_ID = 10001
WAIT_SECONDS = 60


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """The user's task code, mounted at /app (on the image's PYTHONPATH)."""
    directory = tmp_path / "app"
    directory.mkdir(mode=0o755)
    (directory / TASK_MODULE.name).write_text(TASK_MODULE.read_text())
    return directory


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A directory the container's unprivileged user writes to and the test reads."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    return directory


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch, database_url: str):
    """The task module, its ``.delay()`` writing to the test database's queue."""
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    import deploy_tasks

    return deploy_tasks


def task_state(conn, task_id: int) -> str:
    return fetch_all(conn, "SELECT state FROM task_processor.tasks WHERE id = %s", (task_id,))[0][0]


def worker_pids(conn) -> set[int]:
    """Pids (as the container sees them) of idle workers of the running processor."""
    return {
        pid
        for (pid,) in fetch_all(
            conn,
            "SELECT w.pid FROM task_processor.workers w JOIN task_processor.processors p"
            " ON p.id = w.processor_id WHERE p.state = 'running' AND w.state = 'idle'",
        )
    }


def namespace_pid(process: psutil.Process) -> int:
    """The pid ``process`` has in its innermost PID namespace (the container's)."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[-1])


def zombies(process: psutil.Process) -> list[int]:
    found = []
    for child in process.children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def healthcheck(images: Images, name: str) -> int:
    """The image's HEALTHCHECK, run now by the engine; its exit status."""
    return images.podman.run("healthcheck", "run", name, check=False).returncode


def test_the_image_is_built_as_documented(images, record_property):
    """Built with --format docker it keeps its HEALTHCHECK; pip builds a wheel (no legacy
    ``setup.py install``); the machine's pip settings used by the build are not in the image.
    The set-up's durations and the image's size on top of its base are recorded (--junitxml)."""
    podman = images.podman
    inspected = json.loads(podman.run("image", "inspect", images.app).stdout)[0]
    base_size = json.loads(podman.run("image", "inspect", images.base).stdout)[0]["Size"]
    record_property("image MB on top of the base", round((inspected["Size"] - base_size) / 1e6))
    for step, seconds in images.seconds.items():
        record_property(f"{step} seconds", round(seconds, 1))
    assert inspected["Healthcheck"]["Test"] == ["CMD", "check-health"]
    assert inspected["Config"]["User"] == "taskprocessor:taskprocessor"
    assert "DEPRECATION" not in images.build_log, images.build_log
    assert "Building wheel for task-processor" in images.build_log
    left = podman.run(
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "sh",
        images.app,
        "-c",
        "cat /etc/pip.conf 2>/dev/null; id -u",
    ).stdout.split()
    assert left == [str(IMAGE_USER_ID)], f"the build's pip settings were kept: {left}"


def test_an_oci_format_build_has_no_healthcheck(images, tmp_path):
    """Why docs/operations.md says to build with ``--format docker`` under podman and buildah:
    the Dockerfile's own HEALTHCHECK line is dropped from an image built in OCI format."""
    healthcheck_line = next(
        line
        for line in (Path(__file__).resolve().parents[2] / "Dockerfile").read_text().splitlines()
        if line.startswith("HEALTHCHECK")
    )
    (tmp_path / "Containerfile").write_text(f"FROM {images.base}\n{healthcheck_line}\n")
    built = {}
    for image_format in ("oci", "docker"):
        tag = f"localhost/healthcheck-{image_format}:test"
        images.podman.run(
            "build", "--format", image_format, "--pull=never", "--tag", tag, str(tmp_path)
        )
        inspected = json.loads(images.podman.run("image", "inspect", tag).stdout)[0]
        built[image_format] = inspected.get("Healthcheck")
    assert built["oci"] is None
    assert built["docker"]["Test"] == ["CMD", "check-health"]


def test_the_image_runs_tasks_under_a_non_root_pid_1_supervisor_and_drains_on_stop(
    images, containers, app_dir, shared_dir, conn, tasks, database_url
):
    podman = images.podman
    name = containers.start(
        images.app,
        *PROCESSOR_OPTIONS,
        options=(
            "--env",
            f"DATABASE_URL={database_url}",
            "--volume",
            f"{app_dir}:/app:ro",
            "--volume",
            f"{shared_dir}:/shared",
        ),
    )
    wait_for(
        lambda: len(worker_pids(conn)) == 2, timeout=WAIT_SECONDS, message="both workers to be idle"
    )

    # PID 1 is the supervisor itself, as the unprivileged image user.
    supervisor = psutil.Process(podman.host_pid(name))
    assert namespace_pid(supervisor) == 1
    assert supervisor.uids().real == IMAGE_USER_ID
    assert fetch_all(conn, "SELECT host, pid, state FROM task_processor.processors") == [
        (name, 1, "running")
    ]
    assert {namespace_pid(child) for child in supervisor.children()} == worker_pids(conn)

    # Tasks run.
    quick = tasks.nap.delay(args=(0,))
    wait_for(
        lambda: task_state(conn, quick) == "succeeded",
        timeout=WAIT_SECONDS,
        message="a task to run",
    )

    # The HEALTHCHECK passes; `exec` and `--all` check this processor, a new container does not.
    assert healthcheck(images, name) == 0
    assert podman.run("exec", name, "check-health", check=False).returncode == 0

    def check_health_in_a_new_container(*flags: str) -> subprocess.CompletedProcess:
        return podman.run(
            "run",
            "--rm",
            "--network",
            "host",
            "--env",
            f"DATABASE_URL={database_url}",
            images.app,
            "check-health",
            *flags,
            check=False,
        )

    alone = check_health_in_a_new_container()
    assert alone.returncode == 1, alone.stdout
    assert "no task processor" in alone.stdout
    everyone = check_health_in_a_new_container("--all")
    assert everyone.returncode == 0, everyone.stdout

    # A SIGKILLed worker is reaped and replaced.
    victim = supervisor.children()[0]
    victim_in_container = namespace_pid(victim)
    victim.send_signal(signal.SIGKILL)
    wait_for(
        lambda: len(worker_pids(conn)) == 2 and victim_in_container not in worker_pids(conn),
        timeout=WAIT_SECONDS,
        message="a new worker in the killed one's slot",
    )
    assert not victim.is_running(), "the killed worker was not reaped"

    # An orphan left by task code is re-parented to PID 1 and reaped: no zombies.
    pid_file = shared_dir / "orphan.pid"
    orphaning = tasks.leave_orphan.delay(args=("/shared/orphan.pid", 1.5))
    in_container = int(
        wait_for(
            lambda: pid_file.exists() and pid_file.read_text().strip(),
            timeout=WAIT_SECONDS,
            message="the task's grandchild to start",
        )
    )
    orphan = next(
        process
        for process in supervisor.children(recursive=True)
        if namespace_pid(process) == in_container
    )
    wait_for(
        lambda: orphan.ppid() == supervisor.pid,
        timeout=WAIT_SECONDS,
        message="the orphan to be re-parented to PID 1",
    )
    wait_for(
        lambda: not orphan.is_running(), timeout=WAIT_SECONDS, message="PID 1 to reap the orphan"
    )
    assert task_state(conn, orphaning) == "succeeded"
    assert zombies(supervisor) == []

    # A stopped supervisor fails the HEALTHCHECK; it passes again once it resumes.
    podman.run("kill", "--signal", "STOP", name)
    wait_for(
        lambda: healthcheck(images, name) == 1,
        timeout=WAIT_SECONDS,
        message="the HEALTHCHECK to fail for the stopped supervisor",
    )
    last = json.loads(podman.inspect(name, "{{json .State.Health.Log}}"))[-1]
    assert "frozen or dead" in last["Output"], last
    podman.run("kill", "--signal", "CONT", name)
    wait_for(
        lambda: healthcheck(images, name) == 0,
        timeout=WAIT_SECONDS,
        message="the HEALTHCHECK to pass once the supervisor resumes",
    )

    # `podman stop -t 45` drains: the running task finishes, exit status 0.
    slow = tasks.nap.delay(args=(3,))
    wait_for(
        lambda: task_state(conn, slow) == "running",
        timeout=WAIT_SECONDS,
        message="a long task to start",
    )
    podman.run("stop", "--time", "45", name, timeout=90)
    assert podman.inspect(name, "{{.State.ExitCode}}") == "0", podman.run("logs", name).stderr
    assert task_state(conn, slow) == "succeeded", "the drain cut the running task short"
    assert fetch_all(conn, "SELECT state FROM task_processor.processors") == [("stopped",)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_image_serves_the_api(images, containers, database_url):
    port = free_port()
    containers.start(
        images.app,
        "run-api",
        "--bind",
        f"127.0.0.1:{port}",
        options=("--env", f"DATABASE_URL={database_url}"),
    )

    def health() -> dict | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/health?format=json", timeout=10
            ) as response:
                return json.loads(response.read()) if response.status == 200 else None
        except OSError:
            return None

    assert wait_for(health, timeout=WAIT_SECONDS, interval=0.2, message="run-api to answer") == {
        "database": "working"
    }
