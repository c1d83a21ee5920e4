"""deploy/task-processor.service under a real systemd: PID 1 of a privileged container made
from the run's image (tests/support/deploy_podman.py) plus Debian's systemd, installed as the
unit's header and docs/operations.md say, against the test database on the host's PostgreSQL.

Checked: ``Type=notify`` readiness (``systemctl enable --now`` returns once the workers are up),
the watchdog (a stopped supervisor is killed, the unit restarted, and the new processor requeues
the old one's task), ``systemctl reload``, and ``systemctl stop`` draining a running task; all
under the unit's sandboxing. The one change to the
unit is a drop-in, as ``systemctl edit`` makes, that shortens WatchdogSec and RestartSec so the
test takes seconds rather than minutes.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from databases import fetch_all
from deploy_files import ROOT
from deploy_podman import SET_UP_TIMEOUT, Containers, Images
from harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SET_UP_TIMEOUT)]

UNIT = ROOT / "deploy" / "task-processor.service"
ENV_EXAMPLE = ROOT / "deploy" / "task-processor.env.example"
TASK_MODULE = Path(__file__).resolve().parents[1] / "support" / "deploy_tasks.py"
WATCHDOG_SECONDS = 6
DROP_IN = f"""[Service]
WatchdogSec={WATCHDOG_SECONDS}
RestartSec=1
"""
# The install steps of docs/operations.md ("systemd"), on the image's virtualenv, which is at
# the path the unit names; the task code is found through PYTHONPATH=/opt/myapp.
CONTAINERFILE = """FROM {image}
USER root
RUN apt-get update && apt-get install -y --no-install-recommends systemd systemd-sysv \\
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin task-processor
COPY task-processor.env deploy_tasks.py task-processor.service test.conf /tmp/install/
RUN install -D -m 0640 -g task-processor /tmp/install/task-processor.env \\
        /etc/task-processor/task-processor.env \\
    && install -m 0644 /tmp/install/task-processor.service /etc/systemd/system/ \\
    && install -D -m 0644 /tmp/install/test.conf \\
        /etc/systemd/system/task-processor.service.d/test.conf \\
    && install -D -m 0644 /tmp/install/deploy_tasks.py /opt/myapp/deploy_tasks.py \\
    && rm -r /tmp/install
HEALTHCHECK NONE
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/sbin/init"]
CMD []
"""
WAIT_SECONDS = 90


def environment_file(database_url: str) -> str:
    """The example EnvironmentFile, edited as its comments ask: database, tasks, workers."""
    values = {
        "DATABASE_URL": database_url,
        "TASK_PROCESSOR_TASKS": "deploy_tasks",
        "TASK_PROCESSOR_NUM_THREADS": "2",
        "TASK_PROCESSOR_SLEEP_INTERVAL_MS": "200",
        "LOG_FORMAT": "text",
    }
    text = ENV_EXAMPLE.read_text()
    for key, value in values.items():
        text, count = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.MULTILINE)
        assert count == 1, f"{ENV_EXAMPLE.name} has no {key}= line"
    return text


@pytest.fixture
def systemd_image(images: Images, tmp_path: Path, database_url: str) -> Iterator[str]:
    context = tmp_path / "systemd-image"
    context.mkdir()
    (context / "Containerfile").write_text(CONTAINERFILE.format(image=images.app))
    (context / "task-processor.env").write_text(environment_file(database_url))
    (context / "task-processor.service").write_text(UNIT.read_text())
    (context / "test.conf").write_text(DROP_IN)
    (context / "deploy_tasks.py").write_text(TASK_MODULE.read_text())
    tag = f"localhost/task-processor-systemd:{tmp_path.name.lower()}"
    images.podman.run(
        "build",
        "--format",
        "docker",
        "--pull=never",
        "--network",
        "host",
        "--tag",
        tag,
        str(context),
        timeout=600,
    )
    yield tag
    images.podman.run("rmi", "--force", tag, check=False)


class Machine:
    """A container whose PID 1 is systemd."""

    def __init__(self, images: Images, name: str) -> None:
        self.podman = images.podman
        self.name = name

    def run(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.podman.run("exec", self.name, *command, timeout=timeout, check=False)

    def systemctl(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *arguments)

    def show(self, *properties: str) -> dict[str, str]:
        output = self.systemctl(
            "show", "task-processor", *(f"--property={p}" for p in properties)
        ).stdout
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def journal(self) -> str:
        return self.run("journalctl", "--no-pager", "-u", "task-processor").stdout


@pytest.fixture
def machine(images: Images, containers: Containers, systemd_image: str) -> Machine:
    try:
        name = containers.start(systemd_image, options=("--privileged", "--systemd=always"))
    except AssertionError as error:
        pytest.skip(f"podman cannot run a privileged container with systemd here: {error}")
    machine = Machine(images, name)
    wait_for(
        lambda: (
            machine.run("systemctl", "is-system-running", "--wait").stdout.strip()
            in {"running", "degraded"}
        ),
        timeout=WAIT_SECONDS,
        interval=0.5,
        message="systemd to finish booting",
    )
    return machine


def worker_pids(conn) -> set[int]:
    """Pids of the idle workers of the running processor."""
    return {
        pid
        for (pid,) in fetch_all(
            conn,
            "SELECT w.pid FROM task_processor.workers w JOIN task_processor.processors p"
            " ON p.id = w.processor_id WHERE p.state = 'running' AND w.state = 'idle'",
        )
    }


def task_state(conn, task_id: int) -> str:
    return fetch_all(conn, "SELECT state FROM task_processor.tasks WHERE id = %s", (task_id,))[0][0]


def test_the_unit_is_ready_once_its_workers_are_up_drains_on_stop_and_restarts_on_watchdog(
    machine, conn, monkeypatch, database_url
):
    monkeypatch.setenv("TASK_RUN_METHOD", "TASK_PROCESSOR")
    import deploy_tasks

    # Type=notify: the documented `enable --now` returns once READY=1 was sent, which the
    # supervisor does after its workers are up.
    started = machine.systemctl("enable", "--now", "task-processor")
    assert started.returncode == 0, started.stderr + machine.journal()
    # The supervisor writes its workers' rows with its heartbeat, at most a second after
    # their slots say they are up.
    wait_for(
        lambda: fetch_all(conn, "SELECT count(*) FROM task_processor.workers") == [(2,)],
        timeout=10,
        message="the workers' rows",
    )
    state = machine.show("ActiveState", "SubState", "MainPID", "StatusText", "User")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert state["User"] == "task-processor"
    assert "2/2 workers" in state["StatusText"], state
    first_pid = int(state["MainPID"])
    assert fetch_all(conn, "SELECT pid, state FROM task_processor.processors") == [
        (first_pid, "running")
    ]

    # The watchdog: a stopped supervisor stops pinging; systemd kills it and restarts the
    # unit, and the new processor requeues the task the old one's worker was running.
    lost = deploy_tasks.nap_twice.delay(args=(8,))
    wait_for(
        lambda: task_state(conn, lost) == "running", timeout=WAIT_SECONDS, message="a task to start"
    )
    machine.systemctl("kill", "--kill-whom=main", "--signal=STOP", "task-processor")
    wait_for(
        lambda: "Watchdog timeout" in machine.journal(),
        timeout=WAIT_SECONDS,
        message="systemd's watchdog to fire",
    )

    def restarted() -> bool:
        state = machine.show("ActiveState", "MainPID")
        return state["ActiveState"] == "active" and state["MainPID"] not in ("0", str(first_pid))

    wait_for(restarted, timeout=WAIT_SECONDS, message="the unit to be restarted")
    wait_for(
        lambda: task_state(conn, lost) == "succeeded",
        timeout=WAIT_SECONDS,
        message="the new processor to run the lost task again",
    )
    assert [
        result
        for (result,) in fetch_all(
            conn,
            "SELECT result FROM task_processor.runs WHERE task_id = %s ORDER BY attempt",
            (lost,),
        )
    ] == ["worker_lost", "success"]
    assert machine.show("NRestarts")["NRestarts"] == "1"

    # `systemctl reload` (ExecReload, SIGHUP): the same supervisor replaces its workers.
    main_pid = machine.show("MainPID")["MainPID"]
    before = worker_pids(conn)
    reloaded = machine.systemctl("reload", "task-processor")
    assert reloaded.returncode == 0, reloaded.stderr + machine.journal()
    wait_for(
        lambda: len(worker_pids(conn)) == 2 and not worker_pids(conn) & before,
        timeout=WAIT_SECONDS,
        message="the workers to be replaced on reload",
    )
    assert machine.show("MainPID", "ActiveState") == {"MainPID": main_pid, "ActiveState": "active"}

    # `systemctl stop` drains: the running task finishes, the supervisor exits 0.
    slow = deploy_tasks.nap.delay(args=(3,))
    wait_for(
        lambda: task_state(conn, slow) == "running", timeout=WAIT_SECONDS, message="a task to start"
    )
    stopped = machine.systemctl("stop", "task-processor")
    assert stopped.returncode == 0, stopped.stderr
    assert task_state(conn, slow) == "succeeded", "the stop cut the running task short"
    state = machine.show("ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, state
