"""A recurring task for the processor tests, set up by the environment of the processor:

- RECURRING_TEST_PERIOD_SECONDS: its period (default 2)
- RECURRING_TEST_ORIGIN: its first_run_time, an ISO datetime with a zone (default unset)
- RECURRING_TEST_SLEEP_SECONDS: how long each run lasts (default 0)
- RECURRING_TEST_FAIL: when true, every run fails
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

from common.config import env_flag
from common.tasks import register_recurring_task

PERIOD = timedelta(seconds=float(os.environ.get("RECURRING_TEST_PERIOD_SECONDS", "2")))
ORIGIN = os.environ.get("RECURRING_TEST_ORIGIN")
SLEEP_SECONDS = float(os.environ.get("RECURRING_TEST_SLEEP_SECONDS", "0"))
FAIL = env_flag("RECURRING_TEST_FAIL")
FAILURE_MESSAGE = "tick failed on purpose"


@register_recurring_task(
    run_every=PERIOD,
    first_run_time=datetime.fromisoformat(ORIGIN) if ORIGIN else None,
    timeout=timedelta(seconds=30),
)
def tick() -> None:
    time.sleep(SLEEP_SECONDS)
    if FAIL:
        raise RuntimeError(FAILURE_MESSAGE)
