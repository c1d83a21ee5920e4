"""Both layers: ``tests/unit`` (no database, no processes) and ``tests/system`` (real
PostgreSQL, real processes) import their helpers and task modules from ``tests/support``.

Under CI (``CI`` set, as ``.ci/run`` does) a test that skips fails instead, saying why: CI
installs everything the suite needs, so a skip there is a missing tool or a broken set-up, not
something to pass over."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

pytest_plugins = ["defined_tasks"]  # the define and run_method fixtures (tests/support)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {reason}"
