"""The project's commands run from the checkout, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADMIN_COMMAND = [sys.executable, os.path.join(ROOT, "bin", "task-processor")]


def admin(*args: str, **environment: str) -> subprocess.CompletedProcess:
    """Run ``bin/task-processor`` from the checkout's root with extra environment variables."""
    return subprocess.run(
        [*ADMIN_COMMAND, *args],
        env={**os.environ, **environment},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
