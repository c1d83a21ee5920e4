"""Error reporting to Sentry, only when a DSN is configured."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from common import redaction

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

logger = logging.getLogger(__name__)


def init(dsn: str | None, role: str) -> bool:
    """Initialise the Sentry SDK in this process; return whether it is on.

    Each forked worker calls this again: the SDK's transport thread does not survive a fork.
    """
    if not dsn:
        return False
    import sentry_sdk

    redaction.remember_sentry_dsn(dsn)
    sentry_sdk.init(
        dsn=dsn,
        server_name=None,
        default_integrations=True,
        before_send=scrub_event,
        before_send_transaction=scrub_event,
    )
    sentry_sdk.set_tag("task_processor.role", role)
    logger.debug("Sentry reporting is on for %s", role)
    return True


def scrub_event(event: Event, hint: Hint) -> Event:
    """``before_send``: the event with every secret masked, wherever it sits (messages,
    exception values, stack frames' local variables, breadcrumbs, tags)."""
    return redaction.scrub_data(event)
