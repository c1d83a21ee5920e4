"""A periodic duty of the supervisor: warn about due tasks this processor cannot run that have
waited long. During a rolling deploy another release's tasks wait a moment for their own
processors; a warning means that none of them is running, or none has kept up."""

from __future__ import annotations

import logging

from common import db, registry
from common.unrunnable_sql import waiting_unrunnable
from supervisor.periodic import PeriodicCheck

logger = logging.getLogger(__name__)

CHECK_EVERY = 60.0  # seconds between two looks: one statement a minute per processor
WAITED_LONG = 60.0  # due for this long: worth a warning


class UnrunnableWatch(PeriodicCheck):
    """Owned by the supervisor (a :class:`supervisor.database.Duty`), in its single thread."""

    interval = CHECK_EVERY

    def check(self, connection: db.Connection) -> None:
        with connection.cursor() as cursor:
            found = waiting_unrunnable(cursor, registry.identifiers())
        for group in found:
            if group.oldest_seconds < WAITED_LONG:
                continue
            others = (
                f"{group.live_processors_knowing} live processors know it but have not kept up"
                if group.live_processors_knowing
                else "no live processor knows it: start one whose --tasks modules register "
                "it, or delete these tasks"
            )
            logger.warning(
                "%d tasks of %s have waited up to %.0f s: this processor does not "
                "know %s (it is not registered by its --tasks modules); %s",
                group.waiting,
                group.identifier,
                group.oldest_seconds,
                group.identifier,
                others,
            )
