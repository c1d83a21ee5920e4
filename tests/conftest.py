"""Both layers: ``tests/unit`` (no database, no processes) and ``tests/system`` (real
PostgreSQL, real processes) import their helpers and task modules from ``tests/support``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

pytest_plugins = ["defined_tasks"]  # the define and run_method fixtures (tests/support)
