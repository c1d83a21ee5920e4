"""The API's settings, read from the environment so that a host application can mount it."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from common import db
from common.config import ConfigError, env_flag

DEFAULT_ROUND_TRIP_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class ApiSettings:
    database_url: str
    round_trip_enabled: bool = False
    round_trip_timeout_seconds: float = DEFAULT_ROUND_TRIP_TIMEOUT_SECONDS
    monitoring_token: str | None = None
    # Full access to the dashboard, actions included.
    dashboard_token: str | None = None
    # Served only on a loopback address (run-api --bind 127.0.0.1:...): the dashboard may then
    # be read without a token. Unknown (False) when another WSGI server serves the application.
    loopback_only: bool = False

    @classmethod
    def from_environment(
        cls,
        database_url: str | None = None,
        task_processor_database_url: str | None = None,
        data_dir: str | None = None,
        bind_host: str | None = None,
    ) -> ApiSettings:
        """Settings from ``DATABASE_URL``/``TASK_PROCESSOR_DATABASE_URL``,
        ``ENABLE_TASK_PROCESSOR_HEALTH_CHECK``, ``TASK_PROCESSOR_HEALTH_CHECK_TIMEOUT``,
        ``TASK_PROCESSOR_MONITORING_TOKEN`` and ``TASK_PROCESSOR_DASHBOARD_TOKEN``; raise
        :class:`ConfigError` on a bad value."""
        return cls(
            database_url=db.queue_database_url(task_processor_database_url, database_url, data_dir),
            round_trip_enabled=env_flag("ENABLE_TASK_PROCESSOR_HEALTH_CHECK"),
            round_trip_timeout_seconds=_timeout("TASK_PROCESSOR_HEALTH_CHECK_TIMEOUT"),
            monitoring_token=os.environ.get("TASK_PROCESSOR_MONITORING_TOKEN") or None,
            dashboard_token=os.environ.get("TASK_PROCESSOR_DASHBOARD_TOKEN") or None,
            loopback_only=bind_host is not None and is_loopback(bind_host),
        )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for any other name or address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _timeout(name: str) -> float:
    raw = os.environ.get(name)
    if not raw:
        return DEFAULT_ROUND_TRIP_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 60:
        raise ConfigError(
            f"{name} is {raw!r}; expected a number of seconds from 0.1 to 60, "
            f"e.g. {DEFAULT_ROUND_TRIP_TIMEOUT_SECONDS:g}"
        )
    return value
