"""Reconciliation's rules at their boundaries, and the closed-trade look-ups (issue 17: each test here
kills a mutant no test noticed).

Decided, as the code has them (README, "Reconciliation"):
- a tolerance of 0 is allowed (no difference at all is tolerated); a negative one is refused;
- the divergence limits are inclusive: a slippage of exactly 5 pips, a volume exactly 10 % off, an SL or
  TP exactly 10 pips off are tolerated, anything beyond is a divergence;
- the tolerance match is inclusive too: volume exactly 5 % off, open price exactly 2 pips off match;
- a closed trade's history is its recorded position ticket's, else its order ticket's, as long as that
  ticket is not an open position and has history; else the closed position whose opening deal carried
  the trade's magic number *and* comment (never another TradeGuard trade's, never another program's);
- a close is booked only once the closing deals add up to the opened volume, except after a reversal
  (an INOUT deal), whose volumes do not add up.
"""

from decimal import Decimal as D

import pytest

from shared.reconciliation.rules import Tolerances, closed_trade, drawdown_percent, position_key
from tests.unit.test_reconciliation_rules import ACCOUNT, MAGIC, NOW, deal, position, run, trade


@pytest.mark.parametrize("value", ["0", "0.5"])
def test_a_tolerance_of_zero_or_below_one_is_allowed(value):
    assert Tolerances(slippage_pips=D(value)).slippage_pips == D(value)


def test_a_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="slippage_pips must be a non-negative Decimal"):
        Tolerances(slippage_pips=D("-0.01"))


def test_with_zero_tolerances_any_difference_is_a_divergence():
    zero = Tolerances(slippage_pips=D(0), volume_percent=D(0), stop_pips=D(0))
    booked = trade(order_ticket=5001, requested_sl=D("1.08000"))
    exact = position(ticket=5001, sl=D("1.08000"))
    assert run([exact], [booked], tolerances=zero).matches[0].divergences == ()
    off = position(ticket=5001, price_open=D("1.08501"), volume=D("1.01"), sl=D("1.08001"))
    [match] = run([off], [booked], tolerances=zero).matches
    assert [d.kind for d in match.divergences] == ["slippage", "volume", "sl"]


@pytest.mark.parametrize(
    ("changes", "kind"),
    [
        ({"price_open": D("1.08550")}, None),  # exactly 5 pips of slippage: tolerated
        ({"price_open": D("1.08551")}, "slippage"),
        ({"volume": D("1.10")}, None),  # exactly 10 % more: tolerated
        ({"volume": D("1.1001")}, "volume"),
        ({"sl": D("1.08100")}, None),  # exactly 10 pips off: tolerated
        ({"sl": D("1.08101")}, "sl"),
    ],
)
def test_divergence_limits_are_inclusive(changes, kind):
    booked = trade(order_ticket=5001, requested_sl=D("1.08000"))
    [match] = run([position(ticket=5001, **{"sl": D("1.08000"), **changes})], [booked]).matches
    assert [d.kind for d in match.divergences] == ([kind] if kind else [])


@pytest.mark.parametrize(
    ("changes", "matches"),
    [
        ({"volume": D("1.05")}, True),  # exactly 5 % off
        ({"volume": D("1.0501")}, False),
        ({"price_open": D("1.08520")}, True),  # exactly 2 pips off
        ({"price_open": D("1.08521")}, False),
    ],
)
def test_tolerance_matching_is_inclusive(changes, matches):
    result = run([position(**changes)], [trade(comment=None)])
    assert bool(result.matches) is matches


@pytest.mark.parametrize(("volume", "matches"), [("2.10", True), ("2.11", False)])
def test_the_volume_tolerance_is_a_percentage_of_the_trades_volume(volume, matches):
    """5 % of 2 lots is 0.10 lots."""
    booked = trade(comment=None, requested_volume=D("2.00"), filled_volume=D("2.00"))
    assert bool(run([position(volume=D(volume))], [booked]).matches) is matches


# --- which history is a closed trade's ----------------------------------------------------------------


def closing(position_id, *, comment="TG-1", magic=MAGIC, profit="100"):
    """A position's opening deal (with `magic` and `comment`) and its closing deal, by hand."""
    return [
        deal(1, 0, 3, "1.08500", "1.00", position_id=position_id, magic=magic, comment=comment),
        deal(2, 1, 0, "1.08600", "1.00", profit=profit, minutes=5, position_id=position_id),
    ]


def test_a_recorded_ticket_that_is_an_open_position_is_not_the_closed_trades():
    """Ticket 5001 came back as another, open position (its key differs: not the trade's); the trade's
    own closed position is found by its opening deal's comment."""
    booked = trade(order_ticket=5001, position_key="the key of the trade's own position")
    reused = position(ticket=5001)
    history = {5001: closing(5001, comment="", magic=0, profit="1"), 7007: closing(7007, profit="100")}
    result = run([reused], [booked], history)
    [closed] = result.closed_trades
    assert (closed.position_id, closed.profit) == (7007, D("100"))


def test_a_recorded_ticket_without_history_falls_back_to_the_opening_deals_comment():
    [closed] = run([], [trade(position_ticket=5001, order_ticket=5001)], {7007: closing(7007)}).closed_trades
    assert (closed.position_id, closed.reason) == (7007, "by_hand")


def test_the_recorded_position_tickets_history_is_read_before_the_order_tickets():
    booked = trade(position_ticket=5001, order_ticket=6001, comment=None)
    [closed] = run([], [booked], {5001: closing(5001)}).closed_trades
    assert (closed.position_id, closed.reason) == (5001, "by_hand")


@pytest.mark.parametrize(
    ("magic", "comment"),
    [(MAGIC, "TG-2"), (0, "TG-1")],
    ids=["another TradeGuard trade", "another program with the comment"],
)
def test_a_closed_position_is_the_trades_only_by_magic_and_comment_together(magic, comment):
    # The stranger's position sorts first (7006): only both figures together may pick the trade's (7007).
    history = {7006: closing(7006, magic=magic, comment=comment, profit="-50"), 7007: closing(7007)}
    [closed] = run([], [trade(order_ticket=None)], history).closed_trades
    assert (closed.position_id, closed.profit) == (7007, D("100"))


def test_a_trade_gone_without_history_still_names_its_recorded_ticket():
    """Gone, no deal anywhere (the terminal lost it): the vanished event names the position the trade
    recorded, by its order ticket when that is all it has."""
    [closed] = run([], [trade(order_ticket=5001, comment=None)], {}).closed_trades
    assert closed.vanished and closed.position_id == 5001
    assert closed.position_key == position_key(ACCOUNT.login, ACCOUNT.server, 5001, None, trade_id=1)


def test_a_closed_position_found_by_its_opening_deals_comment_is_keyed_by_that_position():
    [closed] = run([], [trade(order_ticket=None)], {7007: closing(7007)}).closed_trades
    assert closed.position_key == position_key(ACCOUNT.login, ACCOUNT.server, 7007, NOW)


# --- when the close is complete ------------------------------------------------------------------------


def test_a_reversed_position_is_closed_although_its_closing_deals_are_less_than_it_opened():
    """Netting: 1.00 bought, an INOUT sell of 1.50 turns it into 0.50 sold, closed by an OUT of 0.50. The
    OUT deals add up to less than the IN ones, yet the position is closed."""
    history = [
        deal(1, 0, 3, "1.08500", "1.00"),
        deal(2, 2, 0, "1.08600", "1.50", profit="100", minutes=1),
        deal(3, 1, 4, "1.08700", "0.50", profit="-50", minutes=5),
    ]
    [closed] = run([], [trade(order_ticket=5001)], {5001: history}).closed_trades
    assert (closed.reason, closed.closed_volume, closed.profit) == ("sl", D("0.50"), D("50"))


def test_closed_trade_alone_never_concludes_vanished():
    """Whether a position without its closing deal has vanished depends on the last sync, which only
    `reconcile` knows: `closed_trade` says "no reason yet" and no more."""
    assert closed_trade(trade(), 5001, []).vanished is False
    assert closed_trade(trade(), 5001, closing(5001)).vanished is False


@pytest.mark.parametrize("ticket", ["order_ticket", "position_ticket"])
def test_a_trade_with_either_ticket_known_is_never_matched_by_tolerance(ticket):
    """Either ticket identifies the trade's position: without it among the open positions, a look-alike
    opened by hand is outside, not the trade's."""
    booked = trade(**{ticket: 5001}, comment=None)
    result = run([position(ticket=9002)], [booked], open_at_last_sync={1})
    assert result.matches == () and [o.position.ticket for o in result.outside_positions] == [9002]


def test_a_trade_of_no_requested_volume_has_no_volume_divergence():
    """Nothing to measure a percentage against (the API never books 0 lots; a row edited by hand might):
    no volume divergence, rather than a division by zero that would stop the account's sync."""
    [match] = run([position(ticket=5001)], [trade(order_ticket=5001, requested_volume=D(0))]).matches
    assert [d.kind for d in match.divergences] == []


def test_closing_deals_of_no_volume_close_at_the_last_ones_price():
    """A history whose closing deals report no volume (and whose opening deal is missing) cannot weight
    the price by volume: the close is at the last closing deal's price, with no division by zero."""
    history = [
        deal(2, 1, 0, "1.08600", "0", minutes=1),
        deal(3, 1, 5, "1.08700", "0", profit="200", minutes=2),
    ]
    [closed] = run([], [trade(order_ticket=5001)], {5001: history}).closed_trades
    assert (closed.reason, closed.close_price, closed.closed_volume) == ("tp", D("1.08700"), D(0))


# --- drawdown ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peak", "equity", "drawdown"), [("1", "0.5", "50"), ("0.5", "0.25", "50"), ("0", "-5", "0")]
)
def test_any_positive_peak_measures_the_drawdown(peak, equity, drawdown):
    assert drawdown_percent(D(peak), D(equity)) == D(drawdown)
