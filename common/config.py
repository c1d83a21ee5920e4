"""Every configuration option, defined once: flag, environment variable, config-file key,
default, bounds and help.

Commands build their parsers from this table with :func:`build_parser`, so an option means the
same thing everywhere. Any configuration error ends the program with exit status 78
(``EX_CONFIG``): systemd's ``RestartPreventExitStatus=78`` then stops a restart loop that no
restart could fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn
from urllib.parse import urlsplit

import configargparse
import psycopg2
import psycopg2.extensions

from common import redaction

EX_CONFIG = 78


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message says which and how to fix it."""


def bounded_int(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: an integer within [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {minimum} to {maximum}, got {text!r}"
            ) from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {minimum} to {maximum}, got {value}"
            )
        return value

    parse.__name__ = "integer"
    return parse


def parse_bool(text: str) -> bool:
    """An argparse type for environment-style booleans (``True``/``false``/``1``/``no``...)."""
    lowered = str(text).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def host_and_port(text: str) -> tuple[str, int]:
    """An argparse type: ``HOST:PORT`` or ``[IPv6]:PORT``; port 0 picks a free port."""
    host, separator, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT such as 127.0.0.1:8000 or [::1]:8000, got {text!r}"
        )
    return host, int(port_text)


def database_url(text: str) -> str:
    """An argparse type: a ``postgresql://`` URL, or a libpq keyword/value string, naming a
    host and a database. Its password is a secret from the moment it is read."""
    redaction.remember_database(text)
    try:
        validate_database_url(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


POLL_ONLY = "none"


def listen_url(text: str) -> str:
    """An argparse type: a database URL to LISTEN on, or ``none`` for polling only."""
    if text.strip().lower() == POLL_ONLY:
        return POLL_ONLY
    return database_url(text)


_EXAMPLE_URL = "postgresql://USER:PASSWORD@HOST:5432/DBNAME"


def validate_database_url(url: str) -> None:
    """Raise :class:`ConfigError` unless libpq reads ``url`` as the URL it looks like, with a
    host and a database. The message never quotes the value: it may hold a password."""
    if "://" in url:
        _validate_url_shape(url)
    elif "=" not in url:
        raise ConfigError(
            f"a database URL is expected, such as {_EXAMPLE_URL} (or a "
            f"keyword/value string such as 'host=HOST dbname=DBNAME')"
        )
    try:
        params = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:
        # libpq's message may quote part of the password: never show it.
        raise ConfigError(
            f"malformed database URL (libpq cannot read it; a password "
            f"containing / ? # @ : or spaces must be percent-encoded, or quoted "
            f"in a keyword/value string); expected {_EXAMPLE_URL}"
        ) from None
    if not (params.get("host") or params.get("hostaddr")):
        raise ConfigError(f"database URL names no host; expected {_EXAMPLE_URL}")
    if not params.get("dbname"):
        raise ConfigError(f"database URL names no database; expected {_EXAMPLE_URL}")


def _validate_url_shape(url: str) -> None:
    """What libpq would read differently from the URL's look: an unencoded ``@`` or ``/`` in
    the password makes part of it the host, the port or the database name."""
    try:
        parts = urlsplit(url)
        for host in parts.netloc.rpartition("@")[2].split(","):  # several: failover
            urlsplit(f"//{host}").port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(
            f"malformed database URL (host or port unreadable; a password containing / ? # @ "
            f"or : must be percent-encoded); expected {_EXAMPLE_URL}"
        ) from None
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ConfigError(
            f"database URL must start with postgresql:// (got scheme {parts.scheme!r}); "
            f"expected {_EXAMPLE_URL}"
        )
    if parts.netloc.count("@") > 1:
        raise ConfigError(
            f"malformed database URL: its password contains an unencoded @, "
            f"which makes part of it the host name; write @ as %40 in the "
            f"password; expected {_EXAMPLE_URL}"
        )


def sentry_dsn(text: str) -> str:
    """An argparse type: a Sentry DSN (``https://KEY@HOST/PROJECT``), refused at start rather
    than by the SDK's traceback; never quoted, since it holds the key."""
    redaction.remember_sentry_dsn(text)
    if not text:
        return text
    from sentry_sdk.utils import BadDsn, Dsn  # the SDK loads only when a DSN is given

    try:
        Dsn(text)
    except BadDsn:
        raise argparse.ArgumentTypeError(
            "not a Sentry DSN; expected https://KEY@HOST/PROJECT_ID, as shown in the "
            "project's Client Keys (DSN) settings"
        ) from None
    return text


class Option(NamedTuple):
    """One configuration option. ``flags[0]`` is its canonical name; ``env`` its variable."""

    flags: tuple[str, ...]
    dest: str
    help: str
    env: str | None = None
    default: Any = None
    type: Callable[[str], Any] | None = None
    action: str | None = None
    metavar: str | None = None
    choices: Sequence[str] | None = None
    required: bool = False
    extra: dict[str, Any] | None = None  # more keywords for ``add_argument``

    def add_to(self, parser: configargparse.ArgumentParser) -> None:
        kwargs: dict[str, Any] = {"dest": self.dest, "help": self.help, **(self.extra or {})}
        if self.env:
            kwargs["env_var"] = self.env
        for name in ("default", "type", "action", "metavar", "choices"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        if self.required:
            kwargs["required"] = True
        parser.add_argument(*self.flags, **kwargs)


# The queue's URL; the processor also gives it to its workers, for the programs tasks start.
QUEUE_URL_VARIABLE = "TASK_PROCESSOR_DATABASE_URL"

OPTIONS: dict[str, Option] = {
    option.dest: option
    for option in (
        # -- shared by every command ------------------------------------------------------
        Option(
            ("--database-url",),
            "database_url",
            env="DATABASE_URL",
            type=database_url,
            metavar="URL",
            help="PostgreSQL URL of the application database (postgresql://...)",
        ),
        Option(
            ("--task-processor-database-url",),
            "task_processor_database_url",
            env=QUEUE_URL_VARIABLE,
            type=database_url,
            metavar="URL",
            help="PostgreSQL URL of a database of its own for the queue (default: DATABASE_URL)",
        ),
        Option(
            ("--data-dir",),
            "data_dir",
            env="TASK_PROCESSOR_DATA_DIR",
            metavar="DIR",
            help="with no database URL: the data directory of the embedded PostgreSQL server "
            "(default ~/.local/share/task-processor; /var/lib/task-processor for root)",
        ),
        Option(
            ("--log-level",),
            "log_level",
            env="LOG_LEVEL",
            default="INFO",
            choices=("DEBUG", "INFO", "WARNING", "ERROR"),
            type=str.upper,
            help="log level (default INFO)",
        ),
        Option(
            ("--log-format",),
            "log_format",
            env="LOG_FORMAT",
            default="text",
            choices=("text", "json"),
            help="log line format: text or json (default text)",
        ),
        Option(
            ("--sentry-dsn",),
            "sentry_dsn",
            env="SENTRY_DSN",
            type=sentry_dsn,
            metavar="DSN",
            help="report errors to this Sentry DSN (off when unset)",
        ),
        # -- run-api ----------------------------------------------------------------------------
        Option(
            ("--bind",),
            "bind",
            env="TASK_PROCESSOR_API_BIND",
            default="127.0.0.1:8000",
            type=host_and_port,
            metavar="HOST:PORT",
            help="address the HTTP API listens on; port 0 picks a free one "
            "(default 127.0.0.1:8000)",
        ),
        Option(
            ("--workers",),
            "api_workers",
            env="TASK_PROCESSOR_API_WORKERS",
            default=2,
            type=bounded_int(1, 64),
            metavar="N",
            help="HTTP server processes (default 2)",
        ),
        Option(
            ("--threads",),
            "api_threads",
            env="TASK_PROCESSOR_API_THREADS",
            default=8,
            type=bounded_int(1, 256),
            metavar="N",
            help="request threads per HTTP server process (default 8)",
        ),
        Option(
            ("--request-timeout",),
            "api_request_timeout",
            env="TASK_PROCESSOR_API_REQUEST_TIMEOUT",
            default=10,
            type=bounded_int(1, 3600),
            metavar="SECONDS",
            help="close a connection whose client sends or reads nothing for this long "
            "(default 10)",
        ),
        # -- run-task-processor ---------------------------------------------------------------
        Option(
            ("--tasks",),
            "tasks",
            env="TASK_PROCESSOR_TASKS",
            action="append",
            metavar="MODULE",
            help="module that defines tasks; repeat for several (env: comma-separated)",
        ),
        Option(
            ("--numthreads",),
            "numthreads",
            env="TASK_PROCESSOR_NUM_THREADS",
            default=5,
            type=bounded_int(1, 256),
            metavar="N",
            help="number of worker processes (the name is the reference's) (default 5)",
        ),
        Option(
            ("--sleepintervalms",),
            "sleepintervalms",
            env="TASK_PROCESSOR_SLEEP_INTERVAL_MS",
            default=2000,
            type=bounded_int(10, 3_600_000),
            metavar="MS",
            help="the longest an idle worker waits before the queue is checked again (one "
            "check per interval for the whole processor); new tasks wake a worker at once "
            "(default 2000)",
        ),
        Option(
            ("--listen-database-url",),
            "listen_database_url",
            env="TASK_PROCESSOR_LISTEN_DATABASE_URL",
            type=listen_url,
            metavar="URL|none",
            help="direct connection on which workers LISTEN for new tasks, when the queue's URL "
            "is a pooler in transaction mode; none: poll every --sleepintervalms only "
            "(default: the queue's URL)",
        ),
        Option(
            ("--graceperiodms",),
            "graceperiodms",
            env="TASK_PROCESSOR_GRACE_PERIOD_MS",
            default=20000,
            type=bounded_int(100, 86_400_000),
            metavar="MS",
            help="an idle worker silent this long is stuck and is replaced (default 20000)",
        ),
        Option(
            ("--queuepopsize",),
            "queuepopsize",
            env="TASK_PROCESSOR_QUEUE_POP_SIZE",
            default=10,
            type=bounded_int(1, 1000),
            metavar="N",
            help="tasks a worker claims in one statement (default 10)",
        ),
        Option(
            ("--drain-timeout",),
            "drain_timeout",
            env="TASK_PROCESSOR_DRAIN_TIMEOUT",
            default=30,
            type=bounded_int(0, 86_400),
            metavar="SECONDS",
            help="on SIGTERM, how long running tasks may finish before they are killed "
            "(default 30)",
        ),
        Option(
            ("--max-tasks-per-worker",),
            "max_tasks_per_worker",
            env="TASK_PROCESSOR_MAX_TASKS_PER_WORKER",
            default=0,
            type=bounded_int(0, 1_000_000_000),
            metavar="N",
            help="replace a worker after it ran this many tasks; 0 never (default 0)",
        ),
        Option(
            ("--max-worker-memory-mb",),
            "max_worker_memory_mb",
            env="TASK_PROCESSOR_MAX_WORKER_MEMORY_MB",
            default=0,
            type=bounded_int(0, 1_000_000),
            metavar="MB",
            help="replace a worker whose resident memory exceeds this; 0 never (default 0)",
        ),
        Option(
            ("--lease-seconds",),
            "lease_seconds",
            env="TASK_PROCESSOR_LEASE_SECONDS",
            default=60,
            type=bounded_int(2, 86_400),
            metavar="SECONDS",
            help="lease of a claimed task, renewed while its processor lives; after a lost "
            "processor its tasks are requeued this long after its last renewal (default 60)",
        ),
        Option(
            ("--retention-days",),
            "retention_days",
            env="TASK_PROCESSOR_RETENTION_DAYS",
            default=30,
            type=bounded_int(1, 36_500),
            metavar="DAYS",
            help="delete finished tasks and their runs after this many days (default 30)",
        ),
        Option(
            ("--dead-retention-days",),
            "dead_retention_days",
            env="TASK_PROCESSOR_DEAD_RETENTION_DAYS",
            default=90,
            type=bounded_int(1, 36_500),
            metavar="DAYS",
            help="delete dead tasks (out of attempts) after this many days (default 90)",
        ),
        Option(
            ("--metrics-bind",),
            "metrics_bind",
            env="TASK_PROCESSOR_METRICS_BIND",
            type=host_and_port,
            metavar="HOST:PORT",
            help="serve the processor's Prometheus metrics on http://HOST:PORT/metrics (needs "
            "the metrics extra); port 0 picks a free one (default: off)",
        ),
        Option(
            ("--migrate",),
            "migrate",
            env="TASK_PROCESSOR_MIGRATE",
            default=True,
            type=parse_bool,
            metavar="BOOL",
            help="apply pending schema migrations at start (default true)",
        ),
    )
}


# Variables the reference's deployments set under an older name: honoured when the current
# name is unset (the reference's own start script reads them the same way).
LEGACY_ENV = {"TASK_PROCESSOR_SLEEP_INTERVAL_MS": "TASK_PROCESSOR_SLEEP_INTERVAL"}


def with_legacy_names(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with each current variable that is unset taken from its legacy name."""
    merged = dict(environ)
    for current, legacy in LEGACY_ENV.items():
        if not merged.get(current) and merged.get(legacy):
            merged[current] = merged[legacy]
    return merged


# The options every long-running command takes: where the database is, and how to log.
SHARED_OPTIONS = (
    "database_url",
    "task_processor_database_url",
    "data_dir",
    "log_level",
    "log_format",
    "sentry_dsn",
)


class _Parser(configargparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`ConfigError` instead of exiting with 2,
    and that reads the legacy names of environment variables."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)

    def parse_known_args(
        self, args=None, namespace=None, config_file_contents=None, env_vars=os.environ, **kwargs
    ):
        return super().parse_known_args(
            args, namespace, config_file_contents, with_legacy_names(env_vars), **kwargs
        )


def _config_file_parser(options: Sequence[str]) -> type:
    """One config file serves every command: a key that names another command's option is
    passed over, while a key that no command knows stays an error (a typo must not be
    silently ignored)."""
    own = {flag.lstrip("-") for name in options for flag in OPTIONS[name].flags}
    others = {flag.lstrip("-") for option in OPTIONS.values() for flag in option.flags} - own

    class SharedConfigFileParser(configargparse.DefaultConfigFileParser):
        def parse(self, stream):
            try:
                items = super().parse(stream)
            except UnicodeDecodeError as error:
                raise ConfigError(
                    f"config file {getattr(stream, 'name', '?')} is not UTF-8 text (byte "
                    f"{error.object[error.start]:#04x} at offset {error.start}); save it as "
                    f"UTF-8"
                ) from None
            return OrderedDict(
                (key, value) for key, value in items.items() if key.lstrip("-") not in others
            )

    return SharedConfigFileParser


def build_parser(
    prog: str, description: str, options: Sequence[str], config_file: bool = True
) -> configargparse.ArgumentParser:
    """A parser for ``prog`` with the named options of :data:`OPTIONS`, plus ``--config``."""
    parser = _Parser(
        config_file_parser_class=_config_file_parser(options),
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        args_for_setting_config_path=["--config"] if config_file else [],
        config_arg_help_message="config file (key = value lines, keys as the long flags)",
        auto_env_var_prefix=None,
        add_env_var_help=True,
        allow_abbrev=False,  # a misspelt key must not quietly mean another option
    )
    for name in options:
        OPTIONS[name].add_to(parser)
    return parser


def parse_args(
    parser: configargparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``; report a configuration error on stderr and exit 78."""
    try:
        namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if getattr(namespace, "tasks", None) is not None:
            namespace.tasks = split_modules(namespace.tasks)
        redaction.hide_command_line()
        return namespace
    except ConfigError as error:
        exit_config_error(parser.prog, str(error))
    except SystemExit as exit_:
        if exit_.code not in (0, None):  # configargparse exits on unreadable config files
            sys.exit(EX_CONFIG)
        raise


def split_modules(values: Sequence[str]) -> list[str]:
    """``--tasks a --tasks b,c`` and ``TASK_PROCESSOR_TASKS="a, b"`` both give [a, b, c]."""
    modules: list[str] = []
    for value in values:
        modules.extend(part for part in value.replace(" ", ",").split(",") if part)
    return modules


def exit_config_error(prog: str, message: str) -> NoReturn:
    """Print ``message`` as a configuration error of ``prog`` and exit with EX_CONFIG."""
    print(f"{prog}: configuration error: {redaction.scrub(message)}", file=sys.stderr)
    sys.exit(EX_CONFIG)


def env_flag(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable; an unreadable value is a :class:`ConfigError`."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return parse_bool(raw)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"{name}: {error}") from None
