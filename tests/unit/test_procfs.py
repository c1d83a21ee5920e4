"""What the supervisor reads from /proc about processes: this test's own process is enough."""

from __future__ import annotations

import os

from common.procfs import host_key, is_stopped, process_alive, start_ticks


def test_a_running_process_is_not_stopped_and_has_a_start_time():
    ticks = start_ticks(os.getpid())
    assert isinstance(ticks, int) and ticks > 0
    assert not is_stopped(os.getpid())


def test_a_process_is_alive_only_with_the_start_time_it_registered():
    ticks = start_ticks(os.getpid())
    assert process_alive(os.getpid(), ticks)
    assert not process_alive(os.getpid(), ticks + 1)  # a later process reusing the pid


def test_a_missing_process_has_no_start_time_and_is_not_alive():
    missing = 2**22 + 1  # above the kernel's largest pid
    assert start_ticks(missing) is None
    assert not is_stopped(missing)
    assert not process_alive(missing, 12345)


def test_the_host_key_names_the_boot_and_the_pid_namespace():
    boot, namespace = host_key().split("/")
    assert len(boot) == 36 and namespace.isdigit()
    assert host_key() == f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
