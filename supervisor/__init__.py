"""The processor's parent process: it forks the workers and watches them (see arbiter.py).

Importing this package loads psycopg2 first, without Python's ``ssl`` module. psycopg2 imports
``ssl`` for one reason: to hand OpenSSL's thread locking over to Python, which OpenSSL 1.1 and
later do by themselves (psycopg2-binary carries an OpenSSL 3 of its own, apart from Python's).
Loading ``ssl`` maps the system's OpenSSL into the supervisor and every worker it forks, about
1 MiB of the processor's memory. Connections use TLS as before (libpq does its own), and a task
module that imports ``ssl`` gets it as usual.
"""

import sys


def _import_psycopg2_without_ssl() -> None:
    if "psycopg2" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` raises ImportError
    try:
        import psycopg2  # noqa: F401
    finally:
        del sys.modules["ssl"]


_import_psycopg2_without_ssl()
