"""What a processor imports before it forks is shared by every worker, and carried by each
process of the tree: nothing only some deployments use belongs there."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL_AT_START = ("prometheus_client", "sentry_sdk", "opentelemetry", "gunicorn")
PROCESSOR_MODULES = "supervisor.cli, worker.process, builtin_tasks.health, builtin_tasks.retention"


def test_the_processor_imports_no_optional_library_before_it_forks():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {PROCESSOR_MODULES}; print(' '.join(sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    top_level = {name.split(".")[0] for name in loaded}
    assert top_level.isdisjoint(OPTIONAL_AT_START), top_level & set(OPTIONAL_AT_START)
