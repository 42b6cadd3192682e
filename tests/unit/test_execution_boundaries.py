"""The pre-trade checks and risk limits at their boundaries (issue 17: each of these was a mutant no test
noticed).

Decided, and kept as the code had them:
- a signal expires at its `expires_at`: at that very instant it is no longer executed (as the expiry
  sweep and approvals count it);
- the volume limits are inclusive: exactly `volume_min` and exactly `volume_max` may be sent;
- volumes count in steps from `volume_min` (MT5's rule), and a symbol without a step (0) takes any
  volume within its limits;
- SL and TP must lie *beyond* the stops level: exactly at it is refused. MT5's own rule admits exactly
  at the level (Bid - SL >= StopLevel); TradeGuard keeps one point of its own, since the quote moves
  between its check and the broker's.
A buy's stops are measured from the bid, a sell's from the ask (where each is closed).
"""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from shared.execution import risk
from shared.execution import service as execution
from shared.execution.rules import pre_trade_problems
from shared.guards.settings import OrderLimits
from shared.models import Trade
from tests.unit.test_execution_rules import EURUSD  # stops level 10 points (0.00010)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
BID, ASK = D("1.10000"), D("1.10010")


def problems(**changes):
    args = {
        "side": "buy",
        "volume": D("0.10"),
        "sl": None,
        "tp": None,
        "bid": BID,
        "ask": ASK,
        "rules": EURUSD,
        "expires_at": NOW + timedelta(seconds=30),
        "now": NOW,
    }
    args.update(changes)
    return pre_trade_problems(**args)


def test_a_signal_is_expired_at_its_expires_at_and_executable_just_before():
    assert problems(expires_at=NOW + timedelta(microseconds=1)) == []
    assert problems(expires_at=NOW) == ["signal expired before it could be executed"]


@pytest.mark.parametrize("volume", ["0.01", "100"])
def test_exactly_the_minimum_or_maximum_volume_may_be_sent(volume):
    assert problems(volume=D(volume)) == []


@pytest.mark.parametrize("volume", ["0.009", "100.01"])
def test_a_volume_outside_the_limits_is_refused(volume):
    (problem,) = problems(volume=D(volume))
    assert problem.startswith(f"volume {volume} outside 0.01..100")


def test_volumes_count_in_steps_from_the_minimum():
    """min 0.01, step 0.05: 0.06 is one step up, 0.05 is not on the grid (a grid from 0 would say the
    opposite)."""
    spec = replace(EURUSD, volume_min=D("0.01"), volume_step=D("0.05"))
    assert problems(volume=D("0.06"), rules=spec) == []
    (problem,) = problems(volume=D("0.05"), rules=spec)
    assert "not a multiple of the step 0.05" in problem


def test_a_symbol_without_a_volume_step_takes_any_volume_within_its_limits():
    assert problems(volume=D("0.123"), rules=replace(EURUSD, volume_step=D(0))) == []


# Buy: SL below bid - 0.00010 = 1.09990, TP above bid + 0.00010 = 1.10010.
# Sell: SL above ask + 0.00010 = 1.10020, TP below ask - 0.00010 = 1.10000.
@pytest.mark.parametrize(
    ("side", "stop", "at_the_level", "beyond"),
    [
        ("buy", "sl", "1.09990", "1.09989"),
        ("buy", "tp", "1.10010", "1.10011"),
        ("sell", "sl", "1.10020", "1.10021"),
        ("sell", "tp", "1.10000", "1.09999"),
    ],
)
def test_a_stop_exactly_at_the_stops_level_is_refused_one_point_beyond_is_sent(
    side, stop, at_the_level, beyond
):
    assert problems(side=side, **{stop: D(beyond)}) == []
    (problem,) = problems(side=side, **{stop: D(at_the_level)})
    assert problem.startswith(f"{stop} {at_the_level} must be")


@pytest.mark.parametrize(
    ("side", "stop", "inside"),
    [
        # Inside the level on the side of the price the stop is measured from: refused, although
        # it is on the right side of the other price.
        ("sell", "sl", "1.10015"),  # above the ask, but within 10 points of it
        ("sell", "tp", "1.10005"),  # below the ask (above the bid), within 10 points of the ask
    ],
)
def test_a_sells_stops_keep_the_stops_level_from_the_ask(side, stop, inside):
    (problem,) = problems(side=side, **{stop: D(inside)})
    assert "ask" in problem


def test_any_positive_equity_sizes_the_risk_only_none_or_less_leaves_no_room():
    """Equity 1: an SL one point away on 0.01 lots risks 0.01, 1 % of it, within a 2 % limit. Equity 0
    or less refuses every order while the risk limit is set."""
    limits = OrderLimits(
        max_lots_per_order=None,
        max_open_positions=None,
        max_total_lots=None,
        max_orders_per_minute=None,
        max_risk_percent_per_trade=D(2),
        symbols=None,
    )
    order = {
        "symbol": "EURUSD",
        "volume": D("0.01"),
        "price": D("1.10000"),
        "sl": D("1.09999"),
        "spec": EURUSD,
    }
    assert risk.order_limit_problems(limits=limits, equity=D(1), **order) == []
    (refused,) = risk.order_limit_problems(limits=limits, equity=D("-0.01"), **order)
    assert refused == "equity -0.01 leaves no room for any risk (max_risk_percent_per_trade)"


# --- when an order whose reply was lost may still be on its way ------------------------------------------

SENT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def in_flight(monkeypatch, seconds_after_sending, *, sent_at=SENT):
    monkeypatch.setattr(execution, "utcnow", lambda: SENT + timedelta(seconds=seconds_after_sending))
    settings = execution.ExecutionSettings(terminal_timeout_seconds=10.0, unknown_outcome_grace_seconds=3.0)
    return execution._still_in_flight(Trade(sent_at=sent_at), settings)


def test_an_order_may_be_in_flight_until_exactly_the_terminal_timeout_plus_the_grace_after_sending(
    monkeypatch,
):
    """The lease is terminal_timeout_seconds + unknown_outcome_grace_seconds (10 + 3 s here) from
    sent_at; at its very end the order is no longer in flight and absence may be concluded."""
    assert in_flight(monkeypatch, 0)
    assert in_flight(monkeypatch, 12.999)
    assert not in_flight(monkeypatch, 13)
    assert not in_flight(monkeypatch, 0, sent_at=None)  # never sent: nothing on its way


class HistoryOnly:
    """A terminal with no positions and no deals, noting the windows its deal history is read in."""

    def __init__(self):
        self.windows = []

    def positions(self, symbol=None):
        return []

    def deals(self, date_from, date_to):
        self.windows.append((date_from, date_to))
        return []


def test_a_lost_orders_deals_are_looked_for_from_a_day_before_it_was_sent_to_a_day_after_now(monkeypatch):
    """Trade servers keep their own clock (often hours ahead of UTC): the history is read a day either
    side, from when the order was sent (else when the trade was made)."""
    now = SENT + timedelta(seconds=30)
    monkeypatch.setattr(execution, "utcnow", lambda: now)
    day = timedelta(days=1)
    for sent_at, since in ((SENT, SENT - day), (None, SENT - timedelta(minutes=5) - day)):
        terminal = HistoryOnly()
        trade = Trade(
            sent_at=sent_at, created_at=SENT - timedelta(minutes=5), symbol="EURUSD", magic=1, comment="TG-1"
        )
        assert execution._find_sent_order(terminal, trade) is None
        assert terminal.windows == [(since, now + day)]
