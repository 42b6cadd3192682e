"""How the guards' tasks share out a crowd: `coalesce_alert_tasks`, the alerts one transaction raised
share an `execute_alert` task when their close times lie within the spread of each other, and the task
runs when the last of its group is due (never before any of them)."""

from datetime import UTC, datetime, timedelta

from workers.tasks import coalesce_alert_tasks

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SPREAD = timedelta(milliseconds=100)


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def test_close_times_within_the_spread_share_one_task_at_the_latest_of_them():
    items = [([2], at(40)), ([1], at(0)), ([3], at(100))]
    assert coalesce_alert_tasks(items, SPREAD) == [([3], at(100))]


def test_a_close_time_past_the_spread_of_its_groups_first_starts_a_group_of_its_own():
    items = [([1], at(0)), ([2], at(60)), ([3], at(101)), ([4], at(150)), ([5], at(400))]
    assert coalesce_alert_tasks(items, SPREAD) == [([2], at(60)), ([4], at(150)), ([5], at(400))]


def test_nothing_raised_sends_nothing_and_one_alert_its_own_task():
    assert coalesce_alert_tasks([], SPREAD) == []
    assert coalesce_alert_tasks([([7], at(5))], SPREAD) == [([7], at(5))]
