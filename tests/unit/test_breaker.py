from shared.reconciliation.sync import BreakerSettings, backoff_seconds


def test_the_breaker_backoff_doubles_with_each_failure_past_the_threshold_up_to_the_cap():
    settings = BreakerSettings(failures_to_open=3, first_backoff_seconds=30, max_backoff_seconds=600)
    assert [backoff_seconds(n, settings) for n in (3, 4, 5, 9)] == [30, 60, 120, 600]
