from datetime import UTC, datetime, timedelta

from shared.reconciliation.breaker import BreakerSettings, backoff_seconds, breaker_is_open

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_the_breaker_backoff_doubles_with_each_failure_past_the_threshold_up_to_the_cap():
    settings = BreakerSettings(failures_to_open=3, first_backoff_seconds=30, max_backoff_seconds=600)
    assert [backoff_seconds(n, settings) for n in (3, 4, 5, 9)] == [30, 60, 120, 600]


def test_the_breaker_is_open_only_before_its_open_until():
    assert breaker_is_open(NOW + timedelta(seconds=1), NOW)
    assert not breaker_is_open(NOW, NOW)  # open *until* that moment: from then on, syncs run again
    assert not breaker_is_open(NOW - timedelta(seconds=1), NOW)


def test_a_breaker_that_never_opened_is_closed():
    assert not breaker_is_open(None, NOW)
