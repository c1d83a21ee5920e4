"""The task of the chaos run: it leaves the evidence of each attempt in ``chaos_attempts``."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import psycopg2

from common.tasks import register_task_handler

ATTEMPTS_TABLE = """
CREATE TABLE IF NOT EXISTS chaos_attempts (
    id         bigserial   PRIMARY KEY,
    key        text        NOT NULL,
    pid        integer     NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    seen_at    timestamptz NOT NULL DEFAULT clock_timestamp(),  -- last sign of life
    ended_at   timestamptz
)
"""


@register_task_handler(timeout=timedelta(seconds=10), max_attempts=50)
def step(key: str, seconds: float) -> None:
    """Works for ``seconds``, updating its sign of life every 50 ms: an attempt's span is from
    its start to its end, or to its last sign of life if it was killed."""
    connection = psycopg2.connect(os.environ["DATABASE_URL"], connect_timeout=5)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO chaos_attempts (key, pid) VALUES (%s, %s) RETURNING id",
                (key, os.getpid()),
            )
            (attempt,) = cursor.fetchone()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.05)
                cursor.execute(
                    "UPDATE chaos_attempts SET seen_at = clock_timestamp() WHERE id = %s",
                    (attempt,),
                )
            cursor.execute(
                "UPDATE chaos_attempts SET seen_at = clock_timestamp(), "
                "ended_at = clock_timestamp() WHERE id = %s",
                (attempt,),
            )
    finally:
        connection.close()
