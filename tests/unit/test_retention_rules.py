"""What a roll-up keeps: the extremes of every tier, the last figures, the count of syncs; buckets on
their boundaries; spans that never pass the cutoff."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.insight.retention_rules import Row, bucket_start, cutoffs, roll_up, span_end

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def row(
    seconds: float, equity: str, *, margin: str | None = "500", drawdown: str = "0", samples: int = 1
) -> Row:
    value = Decimal(equity)
    return Row(
        at=T0 + timedelta(seconds=seconds),
        currency="USD",
        equity=value,
        equity_min=value,
        equity_max=value,
        balance=Decimal("1000") + Decimal(seconds),
        peak_equity=value + 10,
        drawdown_percent=Decimal(drawdown),
        margin_level=Decimal(margin) if margin is not None else None,
        open_positions=int(seconds),
        total_lots=Decimal("0.1") * int(seconds),
        samples=samples,
    )


def test_a_minute_keeps_its_spike_and_its_dip_and_ends_on_its_last_figures():
    rows = [row(0, "1000"), row(10, "1500"), row(20, "700", margin=None), row(50, "990", drawdown="3.5")]
    [minute] = roll_up(reversed(rows), "minute")  # any order in
    assert minute.at == T0
    assert (minute.equity_min, minute.equity_max) == (Decimal("700"), Decimal("1500"))
    assert minute.equity == Decimal("990") and minute.balance == Decimal("1050")  # the last sync's
    assert (minute.open_positions, minute.total_lots) == (50, Decimal("5.0"))
    assert minute.peak_equity == Decimal("1510")  # the highest peak
    assert minute.drawdown_percent == Decimal("3.5")  # the deepest
    assert minute.margin_level == Decimal("500")  # the lowest known
    assert minute.samples == 4


def test_buckets_split_on_the_minute_boundary():
    rolled = roll_up([row(59.999, "1"), row(60, "2"), row(119, "3"), row(121, "4")], "minute")
    assert [(r.at, r.equity, r.samples) for r in rolled] == [
        (T0, Decimal("1"), 1),
        (T0 + timedelta(minutes=1), Decimal("3"), 2),
        (T0 + timedelta(minutes=2), Decimal("4"), 1),
    ]


def test_an_hour_of_minutes_keeps_the_extremes_of_the_minutes_not_just_their_last_equity():
    minutes = roll_up([row(0, "1000"), row(30, "400"), row(59, "1000")], "minute")
    minutes += roll_up([row(120, "1000"), row(130, "2500"), row(170, "1000")], "minute")
    [hour] = roll_up(minutes, "hour")
    assert hour.at == T0
    assert (hour.equity_min, hour.equity_max, hour.equity) == (
        Decimal("400"),
        Decimal("2500"),
        Decimal("1000"),
    )
    assert hour.samples == 6


def test_a_bucket_rolled_again_merges_with_its_earlier_row():
    first = roll_up([row(0, "800"), row(10, "900")], "minute")
    again = roll_up([*first, row(40, "850")], "minute")
    assert len(again) == 1
    assert (again[0].equity_min, again[0].equity_max, again[0].equity) == (
        Decimal("800"),
        Decimal("900"),
        Decimal("850"),
    )
    assert again[0].samples == 3


def test_a_bucket_without_any_margin_level_has_none():
    [minute] = roll_up([row(0, "1", margin=None), row(1, "2", margin=None)], "minute")
    assert minute.margin_level is None


def test_bucket_starts_and_cutoffs_fall_on_boundaries():
    at = datetime(2026, 11, 30, 14, 37, 12, 500, tzinfo=UTC)
    assert bucket_start(at, "minute") == datetime(2026, 11, 30, 14, 37, tzinfo=UTC)
    assert bucket_start(at, "hour") == datetime(2026, 11, 30, 14, tzinfo=UTC)
    with pytest.raises(ValueError):
        bucket_start(at, "day")
    assert cutoffs(at, 7, 90) == {
        "minute": datetime(2026, 11, 23, 14, 37, tzinfo=UTC),
        "hour": datetime(2026, 9, 1, 14, tzinfo=UTC),
    }


def test_a_span_holds_at_most_its_longest_and_never_passes_the_cutoff():
    cutoff = T0 + timedelta(hours=10)
    six = timedelta(hours=6)
    assert span_end(T0, cutoff, six) == T0 + six
    assert span_end(T0 + six, cutoff, six) == cutoff
