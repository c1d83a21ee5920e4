"""Processors on hosts of their own: each runs in new PID and UTS namespaces
(``unshare --pid --uts --fork --mount-proc``) with a host name of its own, its supervisor as
the namespace's init. Killing that init (SIGKILL from outside) takes the whole host down at
once, as a machine that loses power does."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil
from harness import REPO, SUPPORT, reap_orphans, wait_for


def missing() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if probe.returncode == 0 else f"cannot make namespaces: {probe.stderr.strip()}"


class Host:
    """``run-task-processor`` on host ``name``, on ``database_url``."""

    def __init__(
        self,
        name: str,
        database_url: str,
        log_path: Path,
        *args: str,
        tasks: Sequence[str] = ("processor_tasks",),
    ) -> None:
        self.name = name
        command = [sys.executable, "-m", "supervisor.cli"]
        for module in tasks:
            command += ["--tasks", module]
        command += list(args)
        script = f"hostname {shlex.quote(name)} && exec {shlex.join(command)}"
        environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
        }
        self.log = open(log_path, "ab")  # noqa: SIM115 - the host's log, closed by stop()
        self.unshare = subprocess.Popen(
            ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "sh", "-c", script],
            cwd=REPO,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def init_pid(self) -> int:
        """The pid, seen from here, of the namespace's init (the supervisor)."""

        def child() -> int | None:
            children = psutil.Process(self.unshare.pid).children()
            return children[0].pid if children else None

        return int(wait_for(child, timeout=20, message=f"host {self.name} started"))

    def kill(self) -> None:
        """SIGKILL the namespace's init: the kernel kills every process of the host."""
        try:
            os.kill(self.init_pid(), signal.SIGKILL)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
        self.unshare.wait(30)

    def stop(self) -> None:
        if self.unshare.poll() is None:
            self.kill()
        reap_orphans()
        self.log.close()
