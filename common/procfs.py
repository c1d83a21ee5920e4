"""What the kernel says about processes, read from ``/proc``: whether one is stopped, when it
started, and which processes can see each other's pids."""

from __future__ import annotations

import os

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces and
    parentheses): field 3, the state, comes first. OSError if there is no such process."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[-1].split()


def is_stopped(pid: int) -> bool:
    """Is ``pid`` stopped by a signal or traced (state T or t)?"""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return False
    return bool(fields) and fields[0] in (b"T", b"t")


def resident_bytes(pid: int) -> int | None:
    """The resident set size of ``pid`` in bytes (field 2 of /proc/<pid>/statm, in pages)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * _PAGE_SIZE


def resident_mb(pid: int) -> float | None:
    """The resident set size of ``pid`` in MiB."""
    size = resident_bytes(pid)
    return None if size is None else size / (1024 * 1024)


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22): exact, and unmoved by changes
    of the wall clock. None if there is no such process; PermissionError if it cannot be read."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        try:
            os.kill(pid, 0)  # with /proc mounted hidepid, another user's process is hidden
        except ProcessLookupError:
            return None
        raise PermissionError(f"/proc/{pid} is hidden from this user") from None
    return int(fields[19])


def process_alive(pid: int, process_start_ticks: int | None) -> bool:
    """Is ``pid`` still the process that registered (not a later one that reuses the number,
    as PID 1 does in every container)? A process we may not look at counts as alive."""
    try:
        return start_ticks(pid) == process_start_ticks
    except PermissionError:
        return True


def host_key() -> str:
    """What processes that can see each other's pids share: the kernel's boot and the PID
    namespace."""
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot_id:
        boot = boot_id.read().strip()
    return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
