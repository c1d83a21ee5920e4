"""Both layers: ``tests/unit`` (no database, no processes) and ``tests/system`` (real
PostgreSQL, real processes) import their helpers and task modules from ``tests/support``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
