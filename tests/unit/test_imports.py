"""What a processor imports before it forks is shared by every worker, and carried by each
process of the tree: nothing only some deployments use belongs there."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROCESSOR_MODULES = "supervisor.cli, worker.process, builtin_tasks.health, builtin_tasks.retention"
OPTIONAL_AT_START = ("prometheus_client", "sentry_sdk", "opentelemetry", "gunicorn")
# Each maps a library into every process of the tree that a processor given a database URL
# never uses: the system's OpenSSL (ssl, hashlib: supervisor/__init__.py, common/prepared.py),
# and what the embedded server needs to start one (common/db.py).
UNUSED_AT_START = ("ssl", "_ssl", "hashlib", "_hashlib", "psutil", "subprocess")


def modules_loaded_by_a_processor() -> set[str]:
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
    return {name.split(".")[0] for name in loaded}


@pytest.mark.parametrize("kind", ["optional", "unused"])
def test_the_processor_imports_nothing_it_does_not_use_before_it_forks(kind):
    unwanted = set(OPTIONAL_AT_START if kind == "optional" else UNUSED_AT_START)
    assert modules_loaded_by_a_processor().isdisjoint(unwanted), (
        modules_loaded_by_a_processor() & unwanted
    )


def test_psycopg2_loaded_without_ssl_still_lets_task_code_import_ssl():
    """The processor keeps ``ssl`` out of psycopg2's import only: a task module or a task that
    needs it imports it as usual."""
    code = (
        "import sys, supervisor.cli, psycopg2; assert 'ssl' not in sys.modules; "
        "import ssl; print(ssl.OPENSSL_VERSION)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "OpenSSL" in result.stdout
