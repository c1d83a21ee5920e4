"""The pytest plugin, run by pytest itself (pytester, in a subprocess) against the tests of a
sample application (tests/support/sample_app) on a real database."""

from __future__ import annotations

import configparser
import os
from importlib import metadata

from harness import REPO, SUPPORT

pytest_plugins = ["pytester"]

SAMPLE = SUPPORT / "sample_app"
ENTRY_POINT = "worker.pytest_plugin"


def plugin_arguments() -> list[str]:
    """Nothing when the installed package declares the entry point (pytest loads it); else
    load the plugin by name, as the entry point would."""
    declared = any(entry.value == ENTRY_POINT for entry in metadata.entry_points(group="pytest11"))
    return [] if declared else ["-p", ENTRY_POINT]


def test_the_package_declares_the_plugin_entry_point():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    entry_points = setup["options.entry_points"]["pytest11"].split()
    assert entry_points == ["task_processor", "=", ENTRY_POINT]


def test_an_applications_tests_run_their_queued_tasks(pytester, database_url, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SAMPLE), str(REPO)]))
    monkeypatch.delenv("TASK_RUN_METHOD", raising=False)
    pytester.makepyfile(test_shop=(SAMPLE / "shop_checks.py").read_text())
    result = pytester.runpytest_subprocess(*plugin_arguments(), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        ["*task_run_method 'NOPE': use one of TASK_PROCESSOR, SEPARATE_THREAD, SYNCHRONOUSLY*"]
    )
