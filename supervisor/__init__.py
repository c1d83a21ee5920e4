"""The processor's parent process: it forks the workers and watches them (see arbiter.py).

Importing this package first trims what the processor loads before it forks, since every
module loaded then is carried by every process of the tree:

- psycopg2 is loaded without Python's ``ssl`` module. psycopg2 imports ``ssl`` for one
  reason: to hand OpenSSL's thread locking over to Python, which OpenSSL 1.1 and later do by
  themselves (psycopg2-binary carries an OpenSSL 3 of its own, apart from Python's). Loading
  ``ssl`` maps the system's OpenSSL into the supervisor and every worker, about 1 MiB of the
  processor's memory. Connections use TLS as before (libpq does its own), and a task module
  that imports ``ssl`` gets it as usual.
- Modules that a library imports at its top for paths the processor never takes run only
  when one of their names is first used, in the process that uses it (:func:`_defer`).
  configargparse imports ``ast``, ``configparser`` and ``csv`` for config-file formats other
  than the one the processor reads, and ``urllib.parse`` imports ``ipaddress`` to check
  bracketed IPv6 hosts; together they are about half a megabyte of the tree (bench/memory.py:
  29.5 MiB with them, 29.1 without). A task module that imports one of them gets the whole
  module on its first use, as usual.
"""

import importlib.util
import sys
import threading

DEFERRED_MODULES = ("ast", "configparser", "csv", "ipaddress")


def _import_psycopg2_without_ssl() -> None:
    if "psycopg2" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` raises ImportError
    try:
        import psycopg2  # noqa: F401
    finally:
        del sys.modules["ssl"]


def _defer(name: str) -> None:
    """Put in ``sys.modules`` an empty module that runs the real module's code in itself the
    first time a name it lacks is looked up (PEP 562's module ``__getattr__``).

    ``importlib.util.LazyLoader`` cannot do it here: an ``import`` statement reads the
    module's ``__spec__``, which makes a lazy module load at once, and these modules are
    imported by libraries, not only used."""
    spec = importlib.util.find_spec(name) if name not in sys.modules else None
    if spec is None or spec.loader is None:
        return
    loader = spec.loader
    module = importlib.util.module_from_spec(spec)
    namespace = vars(module)
    lock = threading.RLock()  # the module's own code may look itself up while it runs

    def load(attribute: str) -> object:
        with lock:
            if namespace.get("__getattr__") is load:
                del namespace["__getattr__"]
                try:
                    loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)  # as a failed import leaves it: retried next
                    raise
        return getattr(module, attribute)

    namespace["__getattr__"] = load
    sys.modules[name] = module


_import_psycopg2_without_ssl()
for _name in DEFERRED_MODULES:
    _defer(_name)
