"""Error reporting to Sentry, only when a DSN is configured."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def init(dsn: str | None, role: str) -> bool:
    """Initialise the Sentry SDK in this process; return whether it is on.

    Each forked worker calls this again: the SDK's transport thread does not survive a fork.
    """
    if not dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(dsn=dsn, server_name=None, default_integrations=True)
    sentry_sdk.set_tag("task_processor.role", role)
    logger.debug("Sentry reporting is on for %s", role)
    return True
