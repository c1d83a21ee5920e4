"""What a processor imports before it forks is shared by every worker, and carried by each
process of the tree: nothing only some deployments use belongs there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROCESSOR_MODULES = "supervisor.cli, worker.process, builtin_tasks.health, builtin_tasks.retention"
OPTIONAL_AT_START = ("prometheus_client", "sentry_sdk", "opentelemetry", "gunicorn")
# Each maps a library into every process of the tree that a processor given a database URL
# never uses: the system's OpenSSL (ssl, hashlib: supervisor/__init__.py, common/prepared.py),
# what the embedded server needs to start one (common/db.py), and importlib.resources with the
# archive, temporary-file and compression modules it brings, for reading the migrations
# (common/migrations: 1 MiB of the tree, bench/memory.py), and socket, whose enums cost the tree
# 0.4 to 0.7 MiB for the host name (os.uname() gives it), systemd's notifications and cutting a
# connection past its deadline (each imports it where it is used), and dataclasses with the
# inspect, dis and opcode modules it brings (0.9 MiB of the tree: the processor's records are
# NamedTuples, its mutable state plain classes).
UNUSED_AT_START = (
    "ssl",
    "_ssl",
    "hashlib",
    "_hashlib",
    "psutil",
    "subprocess",
    "importlib.resources",
    "tempfile",
    "shutil",
    "zipfile",
    "bz2",
    "lzma",
    "socket",
    "dataclasses",
    "inspect",
    # Imported by configargparse (for config-file formats the processor does not read) and by
    # urllib.parse (for bracketed IPv6 hosts); supervisor/__init__.py defers them, so that their
    # code runs only when first used: about half a megabyte of the tree (bench/memory.py).
    "ast",
    "_ast",
    "configparser",
    "csv",
    "_csv",
    "ipaddress",
)


REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Without site's start-up (-S): its .pth hooks, an editable install's finder among them, import
# some of the modules above themselves. The packages are found by path instead.
_LIST_MODULES = f"""
import site, sys
def _deferred(module):  # a module put off by supervisor/__init__.py whose code has not run
    loader = vars(module).get('__getattr__') if module is not None else None
    return getattr(loader, '__module__', None) == 'supervisor'
sys.path[:0] = [{REPOSITORY!r}]
sys.path += site.getsitepackages() + [site.getusersitepackages()]
import {PROCESSOR_MODULES}
print(' '.join(name for name, module in sys.modules.items() if not _deferred(module)))
"""


def modules_loaded_by_a_processor() -> set[str]:
    run = subprocess.run(
        [sys.executable, "-S", "-c", _LIST_MODULES], capture_output=True, text=True, check=True
    )
    return set(run.stdout.split())


def python_output(code: str) -> str:
    """What ``code`` prints, run by a fresh interpreter in the repository; it must succeed."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPOSITORY
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("kind", ["optional", "unused"])
def test_the_processor_imports_nothing_it_does_not_use_before_it_forks(kind):
    unwanted = OPTIONAL_AT_START if kind == "optional" else UNUSED_AT_START
    loaded = modules_loaded_by_a_processor()
    found = {
        name
        for name in loaded
        for module in unwanted
        if name == module or name.startswith(module + ".")
    }
    assert not found, found


def test_psycopg2_loaded_without_ssl_still_lets_task_code_import_ssl():
    """The processor keeps ``ssl`` out of psycopg2's import only: a task module or a task that
    needs it imports it as usual."""
    code = (
        "import sys, supervisor.cli, psycopg2; assert 'ssl' not in sys.modules; "
        "import ssl; print(ssl.OPENSSL_VERSION)"
    )
    assert "OpenSSL" in python_output(code)


def test_a_deferred_module_runs_on_its_first_use_and_is_whole():
    """What supervisor/__init__.py puts off still works for whoever uses it: an import
    statement, a ``from`` import, a name looked up."""
    code = (
        "import supervisor.cli, sys\n"
        "import ast, csv, configparser\n"
        "assert '_ast' not in sys.modules and '_csv' not in sys.modules\n"
        "from ipaddress import ip_address\n"
        "assert str(ip_address('::1')) == '::1'\n"
        "assert ast.literal_eval('[1, (2,)]') == [1, (2,)] and '_ast' in sys.modules\n"
        "assert list(csv.reader(['a,b'])) == [['a', 'b']]\n"
        "assert configparser.ConfigParser().sections() == []\n"
        "print(sorted(name for name in ('ast', 'csv', 'configparser', 'ipaddress')\n"
        "             if '__getattr__' not in vars(sys.modules[name])))\n"
    )
    assert python_output(code).strip() == "['ast', 'configparser', 'csv', 'ipaddress']"


def test_a_deferred_module_that_fails_raises_its_error_and_is_imported_again(tmp_path):
    """A deferred module whose code raises behaves as a failed import: the first name looked
    up raises the module's own error, and the module leaves ``sys.modules``, so the next
    import runs it afresh."""
    (tmp_path / "fails_once.py").write_text(
        "import os\n"
        "if not os.path.exists(__file__ + '.ran'):\n"
        "    open(__file__ + '.ran', 'w').close()\n"
        "    raise RuntimeError('first run fails')\n"
        "VALUE = 42\n"
    )
    code = (
        "import sys, supervisor\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "supervisor._defer('fails_once')\n"
        "import fails_once\n"
        "try:\n"
        "    fails_once.VALUE\n"
        "except RuntimeError as error:\n"
        "    print('raised:', error)\n"
        "print('fails_once' in sys.modules)\n"
        "import fails_once\n"
        "print(fails_once.VALUE)\n"
    )
    assert python_output(code).split("\n")[:3] == ["raised: first run fails", "False", "42"]
