"""Recurring definitions as the code declares them: the grid's origin and the period."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.recurring import MIN_RUN_EVERY, check_run_every, grid_origin

fixed_offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(st.times(), fixed_offsets)
def test_a_time_of_day_with_a_fixed_offset_is_that_instant_on_the_epoch_day(of_day, zone):
    origin = grid_origin(of_day.replace(tzinfo=zone))
    assert origin is not None
    assert origin.utcoffset() == zone.utcoffset(None)
    assert origin.replace(tzinfo=None) == datetime.combine(datetime(1970, 1, 1), of_day)


@given(st.times())
def test_a_time_of_day_without_a_zone_is_utc(of_day):
    assert grid_origin(of_day) == datetime.combine(datetime(1970, 1, 1), of_day, tzinfo=UTC)


@given(st.datetimes(timezones=fixed_offsets))
def test_an_aware_datetime_is_its_own_origin(moment):
    assert grid_origin(moment) is moment


def test_no_first_run_time_means_the_first_start():
    assert grid_origin(None) is None


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (datetime(2024, 1, 1, 3), ValueError, "must be timezone-aware"),
        (time(3, tzinfo=ZoneInfo("Europe/Paris")), ValueError, "offset changes over the year"),
        ("03:00", TypeError, "must be a datetime, a time of day or None"),
    ],
)
def test_unusable_first_run_times_are_refused(value, error, message):
    with pytest.raises(error, match=message):
        grid_origin(value)


@given(st.timedeltas(min_value=MIN_RUN_EVERY))
def test_any_period_of_a_second_or_more_is_kept(period):
    assert check_run_every(period) == period


@given(st.timedeltas(max_value=MIN_RUN_EVERY - timedelta(microseconds=1)))
def test_shorter_periods_are_refused(period):
    with pytest.raises(ValueError, match="run_every must be at least"):
        check_run_every(period)


def test_a_period_that_is_not_a_timedelta_is_refused():
    with pytest.raises(TypeError, match=r"run_every must be a timedelta"):
        check_run_every(3600)
