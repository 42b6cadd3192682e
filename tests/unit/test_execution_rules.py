from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from shared.core.errors import TradeGuardError
from shared.execution.errors import TerminalRetryLater
from shared.execution.rules import Outcome, classify_retcode, pre_trade_problems, trade_comment
from shared.mt5.errors import PermanentTerminalError, RetryableTerminalError
from shared.mt5.types import SymbolSpec

EURUSD = SymbolSpec(
    name="EURUSD",
    digits=5,
    contract_size=D("100000"),
    tick_value=D("1"),
    tick_size=D("0.00001"),
    trade_allowed=True,
    volume_min=D("0.01"),
    volume_max=D("100"),
    volume_step=D("0.01"),
    point=D("0.00001"),
    stops_level_points=10,
)
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def problems(**changes):
    args = {
        "side": "buy",
        "volume": D("0.10"),
        "sl": D("1.0950"),
        "tp": D("1.1100"),
        "bid": D("1.10000"),
        "ask": D("1.10010"),
        "rules": EURUSD,
        "expires_at": NOW + timedelta(seconds=30),
        "now": NOW,
    }
    args.update(changes)
    return pre_trade_problems(**args)


@pytest.mark.parametrize(
    ("retcode", "outcome"),
    [
        (10009, Outcome.FILLED),
        (10010, Outcome.PARTIAL),
        (10004, Outcome.NEW_PRICE),
        (10020, Outcome.NEW_PRICE),
        (10021, Outcome.NEW_PRICE),
        (10012, Outcome.UNKNOWN),
        (10031, Outcome.UNKNOWN),
        (10008, Outcome.UNKNOWN),
        (10006, Outcome.REJECTED),
        (10019, Outcome.REJECTED),
        (10016, Outcome.REJECTED),
        (10018, Outcome.REJECTED),
    ],
)
def test_retcodes_are_classified(retcode, outcome):
    assert classify_retcode(retcode) is outcome


def test_comment_names_the_trade_within_16_characters():
    assert trade_comment(42) == "TG-42"
    assert len(trade_comment(10**12)) <= 16


def test_a_sound_order_has_no_problems():
    assert problems() == []
    assert problems(side="sell", sl=D("1.1100"), tp=D("1.0950")) == []
    assert problems(sl=None, tp=None) == []


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"volume": D("0.001")}, "outside"),
        ({"volume": D("101")}, "outside"),
        ({"volume": D("0.105")}, "step"),
        ({"sl": D("1.09995")}, "sl"),  # within 10 points of the bid
        ({"tp": D("1.10005")}, "tp"),
        ({"side": "sell", "sl": D("1.0950"), "tp": D("1.1100")}, "sl"),
        ({"rules": replace(EURUSD, trade_allowed=False)}, "not tradeable"),
        ({"expires_at": NOW - timedelta(seconds=1)}, "expired"),
    ],
)
def test_unsound_orders_say_why(changes, words):
    found = problems(**changes)
    assert found and any(words in p for p in found), found


def test_retry_later_is_a_retryable_terminal_error():
    """The worker retries it with the terminal's passing failures, and never gives it up as permanent."""
    error = TerminalRetryLater("trade:1 is being executed by another worker")
    assert isinstance(error, RetryableTerminalError) and isinstance(error, TradeGuardError)
    assert error.retryable and not isinstance(error, PermanentTerminalError)
