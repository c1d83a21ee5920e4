"""Podman for the deployment tests, set up once per test run.

No container registry is reachable here, so the Dockerfile's ``FROM`` image is made locally: a
minimal Debian rootfs made with ``debootstrap`` (with the Python the tag promises), imported
with ``podman import`` and tagged with the ``FROM`` name. The project's image is then built from
the unchanged Dockerfile. Both live in a storage of the run's own (``podman --root``), so runs
never see each other's images, and are made once per run under a file lock, so that the
pytest-xdist workers share them. Everything that cannot work on a machine (no root, podman
missing or unable to start a container) becomes a skip reason, recorded for every worker.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_files import ROOT, dockerfile_instructions

CONTAINERS_CONF = ROOT / "deploy" / "containers.conf"
APP_IMAGE = "localhost/task-processor:test"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the Dockerfile's stages use from the python image: `python` with venv and pip, and the
# CA certificates; groupadd/useradd come with every Debian base.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
REQUIRED_COMMANDS = ("podman", "runc", "debootstrap")
BUILD_TIMEOUT = 900
RUNROOT_MAX_LENGTH = 50  # podman refuses a longer one
# For the tests that use the images: the first of them waits for the whole set-up.
SET_UP_TIMEOUT = 900


class CannotRunHere(Exception):
    """Something this machine lacks, not a fault of the project: the tests skip, saying what."""


@dataclass(frozen=True)
class Podman:
    """``podman`` bound to one storage and to deploy/containers.conf."""

    root: Path
    runroot: Path

    def command(self, *args: str) -> list[str]:
        # Without the bind mount of the storage on itself, the run's directory can be deleted
        # like any other once its containers are removed.
        return [
            "podman",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-opt",
            "overlay.skip_mount_home=true",
            *args,
        ]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, **kwargs
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def inspect(self, name: str, template: str) -> str:
        return self.run("inspect", "--format", template, name).stdout.strip()

    def host_pid(self, container: str) -> int:
        """The host's pid of the container's PID 1."""
        return int(self.inspect(container, "{{.State.Pid}}"))


@dataclass(frozen=True)
class Images:
    """What the run's set-up made: the engine, the base and project images, and the numbers."""

    podman: Podman
    base: str
    app: str
    build_log: str
    seconds: dict[str, float]


def base_image_name() -> str:
    """The Dockerfile's ``FROM``: the default of its ``ARG PYTHON_IMAGE``."""
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ARG" and arguments.startswith("PYTHON_IMAGE="):
            return arguments.split("=", 1)[1]
    raise AssertionError("the Dockerfile has no ARG PYTHON_IMAGE=<default>")


def run_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory shared by every pytest-xdist worker of this run, and by no other run."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def why_podman_cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the deployment tests need root (debootstrap, podman with runc and cgroupfs)"
    missing = [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (.ci/run installs them)"
    return None


def pip_settings() -> dict[str, dict[str, str]]:
    """pip's effective configuration on this machine, by section, as ``pip config list``
    reports it: files and PIP_* variables, the variables winning."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    from_environment: dict[str, str] = {}
    for line in listing.splitlines():
        key, _, quoted = line.partition("=")
        section, _, name = key.rpartition(".")
        value = ast.literal_eval(quoted)
        if section == ":env:":
            from_environment[name] = value
        else:
            sections.setdefault(section, {})[name] = value
    sections.setdefault("global", {}).update(from_environment)
    return sections


def pip_build_volumes(directory: Path) -> list[str]:
    """``--volume`` options that give pip inside the build this machine's configuration (as
    /etc/pip.conf) and every local file it names (CA bundle, constraints, local indexes), at
    their own paths and read-only. They exist only while the build's RUN steps run: the image
    keeps at most their empty mount points, never their contents."""
    settings = pip_settings()
    config = directory / "pip.conf"
    config.write_text(
        "".join(
            f"[{section}]\n" + "".join(f"{name} = {value}\n" for name, value in values.items())
            for section, values in settings.items()
        )
    )
    volumes = [f"{config}:/etc/pip.conf:ro"]
    for values in settings.values():
        for word in " ".join(values.values()).split():
            # A local index (file://.../simple) links to files beside it: mount its parent.
            path = (
                os.path.dirname(word.removeprefix("file://").rstrip("/"))
                if word.startswith("file://")
                else word
            )
            if path.startswith("/") and os.path.exists(path):
                volumes.append(f"{path}:{path}:ro")
    return [option for volume in sorted(set(volumes)) for option in ("--volume", volume)]


def debootstrap_base(podman: Podman, directory: Path, name: str) -> None:
    """A minimal Debian with Python, imported as ``name``; the rootfs is removed afterwards."""
    rootfs = directory / "rootfs"
    log = directory / "debootstrap.log"
    with log.open("w") as output:
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT,
        )
    if result.returncode != 0:
        raise CannotRunHere(f"debootstrap failed: {log.read_text()[-2000:]}")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / cache).glob("*"):
            if entry.is_file():
                entry.unlink()
    archive = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    podman.run(
        "import",
        "--change",
        "ENV=LANG=C.UTF-8",
        "-",
        name,
        stdin=archive.stdout,
        timeout=BUILD_TIMEOUT,
    )
    assert archive.wait() == 0, "tar of the rootfs failed"
    shutil.rmtree(rootfs)


def python_matches_the_tag(podman: Podman, name: str) -> None:
    """The base must give the Python its tag promises (python:3.11-... -> 3.11)."""
    promised = name.split(":", 1)[1].split("-", 1)[0]
    version = podman.run(
        "run",
        "--rm",
        "--network",
        "host",
        name,
        "python",
        "-c",
        "import sys; print('%d.%d' % sys.version_info[:2])",
    ).stdout.strip()
    assert version == promised, f"the base image has Python {version}, its tag says {promised}"


def build_app_image(podman: Podman, directory: Path) -> str:
    """``podman build`` of the repository with the unchanged Dockerfile; returns the log."""
    result = podman.run(
        "build",
        "--format",
        "docker",
        "--pull=never",
        "--network",
        "host",
        *pip_build_volumes(directory),
        "--tag",
        APP_IMAGE,
        str(ROOT),
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"the image does not build:\n{log[-4000:]}"
    return log


def make_images(directory: Path) -> Images:
    runroot = directory / "run"
    if len(str(runroot)) > RUNROOT_MAX_LENGTH:
        digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
        runroot = Path(f"/run/tp-podman-{digest}")
    podman = Podman(root=directory / "storage", runroot=runroot)
    info = podman.run("info", check=False)
    if info.returncode != 0:
        raise CannotRunHere(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    seconds: dict[str, float] = {}
    base = base_image_name()
    started = time.monotonic()
    debootstrap_base(podman, directory, base)
    seconds["base image (debootstrap, import)"] = time.monotonic() - started
    probe = podman.run("run", "--rm", "--network", "host", base, "true", check=False)
    if probe.returncode != 0:
        raise CannotRunHere(f"podman cannot start a container: {probe.stderr.strip()[-500:]}")
    python_matches_the_tag(podman, base)
    started = time.monotonic()
    log = build_app_image(podman, directory)
    seconds["project image (podman build)"] = time.monotonic() - started
    return Images(podman, base, APP_IMAGE, log, seconds)


@dataclass(frozen=True)
class Outcome:
    """What the first worker found, for every worker: images, a skip reason, or a failure."""

    images: Images | None = None
    skip: str | None = None
    failure: str | None = None


def outcome_to_json(outcome: Outcome) -> str:
    images = outcome.images
    return json.dumps(
        {
            "skip": outcome.skip,
            "failure": outcome.failure,
            "images": images
            and {
                "root": str(images.podman.root),
                "runroot": str(images.podman.runroot),
                "base": images.base,
                "app": images.app,
                "build_log": images.build_log,
                "seconds": images.seconds,
            },
        }
    )


def outcome_from_json(text: str) -> Outcome:
    data = json.loads(text)
    found = data["images"]
    images = found and Images(
        Podman(Path(found["root"]), Path(found["runroot"])),
        found["base"],
        found["app"],
        found["build_log"],
        found["seconds"],
    )
    return Outcome(images=images, skip=data["skip"], failure=data["failure"])


def prepare(directory: Path) -> Outcome:
    reason = why_podman_cannot_run()
    if reason:
        return Outcome(skip=reason)
    try:
        return Outcome(images=make_images(directory))
    except CannotRunHere as error:
        return Outcome(skip=str(error))
    except Exception:  # a broken Dockerfile must fail every test that needs the image
        return Outcome(failure=traceback.format_exc())


def shared_images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """The run's images, made by whichever worker asks first; skips or fails like it did."""
    directory = run_directory(tmp_path_factory) / "podman"
    directory.mkdir(exist_ok=True)
    record = directory / "outcome.json"
    with (directory / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            record.write_text(outcome_to_json(prepare(directory)))
    outcome = outcome_from_json(record.read_text())
    if outcome.skip:
        pytest.skip(outcome.skip)
    if outcome.failure:
        pytest.fail(outcome.failure)
    assert outcome.images is not None
    return outcome.images


class Containers:
    """Containers started by one test, on the host's network (PostgreSQL on 127.0.0.1) with a
    host name of their own, as Docker gives each container; all removed by ``remove_all``."""

    def __init__(self, podman: Podman) -> None:
        self.podman = podman
        self.names: list[str] = []

    def start(self, image: str, *arguments: str, options: tuple[str, ...] = ()) -> str:
        name = f"tp-test-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        self.podman.run(
            "run",
            "--detach",
            "--name",
            name,
            "--hostname",
            name,
            "--network",
            "host",
            *options,
            image,
            *arguments,
        )
        return name

    def remove_all(self) -> None:
        if self.names:
            self.podman.run("rm", "--force", "--time", "0", *self.names, check=False)
