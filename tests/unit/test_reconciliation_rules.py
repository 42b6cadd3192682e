"""The pure rules of reconciliation: matching, divergence, outside and closed positions, snapshot figures."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from shared.core.config import DEFAULT_MAGIC
from shared.models import Side, Trade, TradeState
from shared.mt5.types import AccountSnapshot, Deal, Position, SymbolSpec, pip_size
from shared.reconciliation.rules import (
    BookedTrade,
    Divergence,
    Tolerances,
    divergences,
    drawdown_percent,
    fingerprint,
    open_position_key,
    peak_equity,
    position_key,
    reconcile,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
MAGIC = DEFAULT_MAGIC


def spec(name, digits, point):
    return SymbolSpec(
        name=name,
        digits=digits,
        point=D(point),
        contract_size=D(100000),
        tick_value=D(1),
        tick_size=D(point),
        volume_min=D("0.01"),
        volume_max=D(100),
        volume_step=D("0.01"),
        stops_level_points=0,
        trade_allowed=True,
    )


SYMBOLS = {
    "EURUSD": spec("EURUSD", 5, "0.00001"),
    "USDJPY": spec("USDJPY", 3, "0.001"),
    "XAUUSD": spec("XAUUSD", 2, "0.01"),
}
ACCOUNT = AccountSnapshot(
    login=1001,
    server="TradeGuard-Sim",
    currency="USD",
    balance=D("10000.00"),
    equity=D("9800.00"),
    margin=D("100.00"),
    margin_free=D("9700.00"),
    margin_level=D("9800.00"),
    leverage=100,
    profit=D("-200.00"),
)


def position(**changes):
    """A position opened by hand (no magic, no comment), so only the fields a test sets can match it."""
    fields = {
        "ticket": 9001,
        "identifier": 9001,
        "symbol": "EURUSD",
        "side": "buy",
        "volume": D("1.00"),
        "price_open": D("1.08500"),
        "sl": None,
        "tp": None,
        "price_current": D("1.08500"),
        "profit": D(0),
        "swap": D(0),
        "magic": 0,
        "comment": "",
        "reason": 0,
        "opened_at": NOW,
    }
    fields.update(changes)
    if "ticket" in changes and "identifier" not in changes:
        fields["identifier"] = changes["ticket"]
    return Position(**fields)


def trade(**changes):
    fields = {
        "id": 1,
        "symbol": "EURUSD",
        "side": "buy",
        "state": "filled",
        "magic": MAGIC,
        "comment": "TG-1",
        "requested_volume": D("1.00"),
        "requested_price": D("1.08500"),
        "filled_volume": D("1.00"),
        "filled_price": D("1.08500"),
    }
    fields.update(changes)
    return BookedTrade(**fields)


def deal(ticket, entry, reason, price, volume, profit="0", commission="0", swap="0", minutes=0, **changes):
    fields = {
        "ticket": ticket,
        "order": ticket,
        "position_id": 5001,
        "symbol": "EURUSD",
        "side": "sell" if entry else "buy",
        "entry": entry,
        "volume": D(volume),
        "price": D(price),
        "profit": D(profit),
        "commission": D(commission),
        "swap": D(swap),
        "magic": MAGIC if entry == 0 else 0,
        "comment": "TG-1" if entry == 0 else "",
        "reason": reason,
        "time": NOW + timedelta(minutes=minutes),
    }
    fields.update(changes)
    return Deal(**fields)


def run(positions=(), trades=(), deals=None, previous_peak=None, account=ACCOUNT, tolerances=None, **options):
    return reconcile(
        list(positions),
        list(trades),
        deals or {},
        previous_peak,
        account,
        tolerances,
        symbols=SYMBOLS,
        **options,
    )


def pairs(result):
    return {(m.trade.id, m.position.ticket, m.matched_by) for m in result.matches}


# --- pips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digits", "point", "pip"),
    [
        (5, "0.00001", "0.0001"),
        (3, "0.001", "0.01"),
        (2, "0.01", "0.01"),
        (4, "0.0001", "0.0001"),
        (1, "0.1", "0.1"),
    ],
)
def test_a_pip_is_ten_points_on_3_and_5_digit_quotes_else_one(digits, point, pip):
    assert pip_size(digits, D(point)) == D(pip)
    assert spec("X", digits, point).pip == D(pip)  # what reconciliation measures pips with


# --- identity matching -----------------------------------------------------------------------------------


def test_identity_by_order_ticket_matches_whatever_the_prices():
    far_off = position(ticket=5001, price_open=D("1.09500"), volume=D("0.50"))
    result = run([far_off], [trade(order_ticket=5001, comment="TG-other")])
    assert pairs(result) == {(1, 5001, "ticket")}
    assert result.outside_positions == ()


def test_identity_by_recorded_position_ticket():
    far_off = position(ticket=5002, identifier=4000, price_open=D("1.09500"))
    result = run([far_off], [trade(position_ticket=5002, order_ticket=None, comment=None)])
    assert pairs(result) == {(1, 5002, "ticket")}


def test_identity_by_magic_and_comment_when_no_ticket_is_known():
    far_off = position(ticket=5001, magic=MAGIC, comment="TG-1", price_open=D("1.09500"), reason=3)
    result = run([far_off], [trade(order_ticket=None)])
    assert pairs(result) == {(1, 5001, "magic_comment")}


@pytest.mark.parametrize(("magic", "comment"), [(MAGIC, "TG-2"), (123, "TG-1")])
def test_magic_and_comment_must_both_agree(magic, comment):
    far_off = position(ticket=5001, magic=magic, comment=comment, price_open=D("1.09500"), reason=3)
    result = run([far_off], [trade()])
    assert result.matches == ()
    assert [o.position.ticket for o in result.outside_positions] == [5001]


def test_an_empty_comment_identifies_nothing():
    by_hand = position(ticket=5001, magic=MAGIC, comment="", price_open=D("1.09500"))
    result = run([by_hand], [trade(comment=None)])
    assert result.matches == ()


# --- tolerance matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "reference", "within", "outside"),
    [
        ("EURUSD", "1.08500", "1.08520", "1.08521"),  # 5 digits: 2 pips = 0.00020
        ("EURUSD", "1.08500", "1.08480", "1.08479"),  # below the reference too
        ("USDJPY", "150.000", "150.020", "150.021"),  # 3 digits: 2 pips = 0.020
        ("XAUUSD", "2000.00", "2000.02", "2000.03"),  # 2 digits: a pip is a point, 2 pips = 0.02
    ],
)
def test_tolerance_price_within_2_pips(symbol, reference, within, outside):
    booked = trade(symbol=symbol, requested_price=D(reference), filled_price=D(reference))
    near = run([position(symbol=symbol, price_open=D(within))], [booked])
    assert pairs(near) == {(1, 9001, "tolerance")}
    far = run([position(symbol=symbol, price_open=D(outside))], [booked])
    assert far.matches == ()
    assert [o.position.ticket for o in far.outside_positions] == [9001]


@pytest.mark.parametrize(
    ("volume", "matches"), [("1.05", True), ("0.95", True), ("1.06", False), ("0.94", False)]
)
def test_tolerance_volume_within_5_percent(volume, matches):
    result = run([position(volume=D(volume))], [trade()])
    assert bool(result.matches) is matches


def test_tolerance_compares_with_the_fill_before_the_request():
    booked = trade(requested_price=D("1.08500"), filled_price=D("1.08600"), requested_volume=D("2.00"))
    assert pairs(run([position(price_open=D("1.08600"))], [booked])) == {(1, 9001, "tolerance")}
    assert run([position(price_open=D("1.08500"))], [booked]).matches == ()


def test_tolerance_falls_back_to_the_request_when_nothing_was_filled_yet():
    booked = trade(state="sent", filled_price=None, filled_volume=None, requested_volume=D("0.50"))
    assert pairs(run([position(volume=D("0.50"))], [booked])) == {(1, 9001, "tolerance")}


def test_market_order_without_any_price_cannot_match_by_tolerance():
    booked = trade(state="sent", filled_price=None, requested_price=None)
    assert run([position()], [booked]).matches == ()


@pytest.mark.parametrize("changes", [{"side": "sell"}, {"symbol": "USDJPY", "price_open": D("1.08500")}])
def test_tolerance_needs_the_same_symbol_and_side(changes):
    assert run([position(**changes)], [trade()]).matches == ()


def test_tolerances_are_parameters():
    three_pips_off = position(price_open=D("1.08530"))
    assert run([three_pips_off], [trade()]).matches == ()
    wider = Tolerances(match_price_pips=D(3))
    assert len(run([three_pips_off], [trade()], tolerances=wider).matches) == 1


def test_tolerances_refuse_negative_values():
    with pytest.raises(ValueError, match="match_price_pips"):
        Tolerances(match_price_pips=D(-1))


# --- identity before tolerance, one to one -------------------------------------------------------------


def test_identity_beats_a_closer_tolerance_candidate():
    # Position 5001 is exactly where trade 2 expects its position, but it carries trade 1's ticket.
    by_ticket = trade(id=1, order_ticket=5001, filled_price=D("1.08400"), comment="TG-1")
    lookalike = trade(id=2, comment="TG-2")
    result = run([position(ticket=5001, price_open=D("1.08500"))], [lookalike, by_ticket])
    assert pairs(result) == {(1, 5001, "ticket")}
    assert [c.trade.id for c in result.closed_trades] == [2]


def test_ticket_identity_beats_magic_comment_identity():
    # Position 4002 carries trade 1's comment, but position 5001 carries trade 1's ticket, which is the
    # stronger proof; 4002 is then free for trade 2, whose fill it matches within tolerance.
    t1 = trade(id=1, order_ticket=5001)
    t2 = trade(id=2, comment="TG-2", order_ticket=None)
    p1 = position(ticket=5001, price_open=D("1.09000"))
    p2 = position(ticket=4002, magic=MAGIC, comment="TG-1")  # the lower ticket: listed and sorted first
    assert pairs(run([p2, p1], [t1, t2])) == {(1, 5001, "ticket"), (2, 4002, "tolerance")}


def test_tolerance_is_one_to_one_and_prefers_the_closest_price():
    t1 = trade(id=1, comment="TG-1", filled_price=D("1.08500"))
    t2 = trade(id=2, comment="TG-2", filled_price=D("1.08510"))
    p1 = position(ticket=9001, price_open=D("1.08515"))  # 1.5 pips from t1, 0.5 from t2
    p2 = position(ticket=9002, price_open=D("1.08501"))  # 0.1 pips from t1, 0.9 from t2
    result = run([p1, p2], [t1, t2])
    assert pairs(result) == {(1, 9002, "tolerance"), (2, 9001, "tolerance")}


def test_one_position_two_candidate_trades_matches_one_trade_only():
    t1 = trade(id=1, comment="TG-1")
    t2 = trade(id=2, comment="TG-2", filled_price=D("1.08501"))
    result = run([position(price_open=D("1.08501"))], [t1, t2])
    assert pairs(result) == {(2, 9001, "tolerance")}
    assert [c.trade.id for c in result.closed_trades] == [1]


def test_one_trade_two_candidate_positions_leaves_one_outside():
    p1 = position(ticket=9001, price_open=D("1.08510"))
    p2 = position(ticket=9002, price_open=D("1.08505"))
    result = run([p1, p2], [trade()])
    assert pairs(result) == {(1, 9002, "tolerance")}
    assert [o.position.ticket for o in result.outside_positions] == [9001]


def test_matching_does_not_depend_on_input_order():
    trades = [trade(id=i, comment=f"TG-{i}") for i in (1, 2, 3)]
    positions = [position(ticket=9000 + i) for i in (1, 2, 3)]
    first = pairs(run(positions, trades))
    assert first == pairs(run(positions[::-1], trades[::-1]))
    assert len(first) == 3
    assert len({p for _, p, _ in first}) == 3


# --- outside positions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "opened_from"), [(0, "desktop"), (1, "mobile"), (2, "web"), (3, "expert"), (9, "unknown")]
)
def test_outside_positions_say_where_they_were_opened(reason, opened_from):
    result = run([position(reason=reason, price_open=D("1.10000"))], [trade()])
    [outside] = result.outside_positions
    assert outside.opened_from == opened_from
    assert outside.position.ticket == 9001


# --- divergence against what was requested ---------------------------------------------------------------


def matched(**position_changes):
    """Reconcile one position that is trade 1's by ticket, so matching never depends on its figures."""
    booked = trade(order_ticket=5001, requested_sl=D("1.08000"), requested_tp=D("1.09500"))
    fields = {"ticket": 5001, "sl": D("1.08000"), "tp": D("1.09500"), **position_changes}
    [match] = run([position(**fields)], [booked]).matches
    return match


def test_no_divergence_when_everything_is_as_requested():
    assert matched().divergences == ()


def test_slippage_of_5_pips_is_tolerated_6_is_a_divergence():
    assert matched(price_open=D("1.08550")).divergences == ()
    assert matched(price_open=D("1.08560")).divergences == (
        Divergence("slippage", "adverse", D("1.08500"), D("1.08560"), D("6.00"), "pips"),
    )


def test_slippage_direction_depends_on_the_side():
    booked = trade(side="sell", order_ticket=5001)
    lower = position(ticket=5001, side="sell", price_open=D("1.08440"))
    higher = position(ticket=5001, side="sell", price_open=D("1.08560"))
    assert run([lower], [booked]).matches[0].divergences[0].change == "adverse"
    assert run([higher], [booked]).matches[0].divergences[0].change == "favourable"


def test_no_slippage_without_a_requested_price():
    booked = trade(order_ticket=5001, requested_price=None, filled_price=D("1.08500"))
    [match] = run([position(ticket=5001, price_open=D("1.09500"))], [booked]).matches
    assert match.divergences == ()


def test_volume_10_percent_off_is_tolerated_11_is_a_divergence():
    assert matched(volume=D("1.10")).divergences == ()
    assert matched(volume=D("0.90")).divergences == ()
    assert matched(volume=D("1.11")).divergences == (
        Divergence("volume", "more", D("1.00"), D("1.11"), D("11.00"), "percent"),
    )
    assert matched(volume=D("0.89")).divergences[0].change == "less"


def test_volume_is_compared_with_the_request_not_the_fill():
    booked = trade(order_ticket=5001, requested_volume=D("1.00"), filled_volume=D("0.50"))
    [match] = run([position(ticket=5001, volume=D("0.50"))], [booked]).matches
    assert [d.kind for d in match.divergences] == ["volume"]


def test_sl_moved_10_pips_is_tolerated_11_is_a_divergence():
    assert matched(sl=D("1.07900")).divergences == ()
    assert matched(sl=D("1.07890")).divergences == (
        Divergence("sl", "moved", D("1.08000"), D("1.07890"), D("11.00"), "pips"),
    )


@pytest.mark.parametrize("absent", [None, D(0)])
def test_sl_removed(absent):
    assert matched(sl=absent).divergences == (Divergence("sl", "removed", D("1.08000"), None, None, None),)


def test_tp_added_when_none_was_requested():
    booked = trade(order_ticket=5001, requested_tp=None)
    [match] = run([position(ticket=5001, tp=D("1.09000"))], [booked]).matches
    assert match.divergences == (Divergence("tp", "added", None, D("1.09000"), None, None),)


def test_tp_moved_on_usdjpy_is_measured_in_its_own_pips():
    booked = trade(
        symbol="USDJPY", order_ticket=5001, requested_price=D("150.000"), requested_tp=D("151.000")
    )
    at = position(ticket=5001, symbol="USDJPY", price_open=D("150.000"), tp=D("151.110"))
    [match] = run([at], [booked]).matches
    assert match.divergences == (Divergence("tp", "moved", D("151.000"), D("151.110"), D("11.00"), "pips"),)


def test_several_divergences_at_once():
    kinds = [
        d.kind
        for d in matched(price_open=D("1.08600"), volume=D("0.50"), sl=None, tp=D("1.10000")).divergences
    ]
    assert kinds == ["slippage", "volume", "sl", "tp"]


# --- fingerprints --------------------------------------------------------------------------------------


def test_fingerprint_is_stable_across_equal_inputs():
    a = matched(sl=D("1.07890"), price_open=D("1.08600"))
    b = matched(sl=D("1.078900"), price_open=D("1.0860"))  # same values, other trailing zeros
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint == fingerprint(reversed(a.divergences))  # order does not matter
    assert len(a.fingerprint) == 64


def test_fingerprint_changes_when_a_divergence_changes():
    moved_11 = matched(sl=D("1.07890")).fingerprint
    assert matched(sl=D("1.07880")).fingerprint != moved_11  # the same kind, a new figure
    assert matched(sl=None).fingerprint != moved_11  # moved became removed
    assert matched(sl=D("1.07890"), volume=D("2.00")).fingerprint != moved_11  # one more divergence
    assert matched().fingerprint != moved_11  # cleared
    assert matched().fingerprint == fingerprint([])


def test_fingerprint_ignores_figures_within_tolerance():
    # Slippage of 1 and of 3 pips are both "no divergence": nothing new to record.
    assert matched(price_open=D("1.08510")).fingerprint == matched(price_open=D("1.08530")).fingerprint


def test_divergences_can_be_called_directly():
    found = divergences(trade(), position(price_open=D("1.08560")), D("0.0001"), Tolerances())
    assert [d.kind for d in found] == ["slippage"]


# --- trades closed outside TradeGuard ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deal_reason", "reason"),
    [
        (4, "sl"),
        (5, "tp"),
        (6, "stop_out"),
        (0, "by_hand"),
        (1, "by_hand"),
        (2, "by_hand"),
        (3, "expert"),
        (7, "unknown"),
    ],
)
def test_closed_trade_reason_price_and_pnl(deal_reason, reason):
    history = [
        deal(1, 0, 3, "1.08500", "1.00", commission="-3.50"),
        deal(
            2, 1, 0, "1.08600", "0.40", profit="40.00", commission="-1.40", minutes=5
        ),  # partly closed by hand
        deal(
            3, 1, deal_reason, "1.08700", "0.60", profit="120.00", commission="-2.10", swap="-0.75", minutes=9
        ),
        deal(4, 1, 0, "1.50000", "1.00", profit="999", position_id=6000),  # another position's deal
    ]
    result = run([], [trade(order_ticket=5001)], {5001: history})
    [closed] = result.closed_trades
    assert closed.reason == reason
    assert closed.position_id == 5001
    assert closed.close_price == D("1.0866")  # (1.086 * 0.4 + 1.087 * 0.6) / 1.0
    assert closed.closed_volume == D("1.00")
    assert closed.profit == D("152.25")  # 40 + 120 - 3.50 - 1.40 - 2.10 - 0.75
    assert closed.closed_at == NOW + timedelta(minutes=9)
    assert closed.summary.startswith(f"closed ({reason})")


def test_close_by_an_opposite_position_counts_as_a_closing_deal():
    history = [
        deal(1, 0, 3, "1.08500", "1.00"),
        deal(2, 3, 0, "1.08300", "1.00", profit="-200.00", minutes=1),
    ]
    [closed] = run([], [trade(position_ticket=5001)], {5001: history}).closed_trades
    assert (closed.reason, closed.close_price, closed.profit) == ("by_hand", D("1.08300"), D("-200.00"))


def test_closed_position_found_by_the_comment_of_its_opening_deal():
    # The reply to order_send was lost: no ticket recorded, but the opening deal carries TG-1.
    history = [
        deal(1, 0, 3, "1.08500", "1.00", position_id=7007),
        deal(2, 1, 5, "1.09500", "1.00", profit="1000", minutes=30, position_id=7007),
    ]
    other = [deal(3, 0, 3, "1.08500", "1.00", position_id=7008, comment="TG-2")]
    [closed] = run([], [trade(order_ticket=None)], {7007: history, 7008: other}).closed_trades
    assert (closed.position_id, closed.reason, closed.profit) == (7007, "tp", D("1000"))


@pytest.mark.parametrize("history", [{}, {5001: [deal(1, 0, 3, "1.08500", "1.00")]}])
def test_closed_with_no_closing_deal_yet_says_so(history):
    # Open at the last sync: its closing deal may be a sync behind.
    [closed] = run([], [trade(order_ticket=5001)], history, open_at_last_sync={1}).closed_trades
    assert closed.reason is None and not closed.vanished
    assert (closed.close_price, closed.profit, closed.closed_at) == (None, None, None)
    assert closed.summary == "closed, reason unknown yet"


@pytest.mark.parametrize(
    "history",
    [
        {},  # the terminal lost the position and its history
        {5001: [deal(1, 0, 3, "1.08500", "1.00")]},  # no closing deal
        {5001: [deal(1, 0, 3, "1.08500", "1.00"), deal(2, 1, 0, "1.08600", "0.40")]},  # part of the close
    ],
)
def test_a_position_gone_without_its_closing_deal_since_the_last_sync_has_vanished(history):
    [closed] = run([], [trade(order_ticket=5001)], history, open_at_last_sync={7}).closed_trades
    assert closed.vanished and closed.reason is None and closed.close_price is None
    assert "without a closing deal" in closed.summary
    # A closing deal is a close, however long the position was gone.
    complete = {5001: [deal(1, 0, 3, "1.08500", "1.00"), deal(2, 1, 0, "1.08600", "1.00")]}
    [closed] = run([], [trade(order_ticket=5001)], complete).closed_trades
    assert (closed.vanished, closed.reason) == (False, "by_hand")


def test_a_position_key_is_its_login_server_identifier_and_open_time():
    opened = NOW.replace(microsecond=123000)
    key = position_key(1001, "Broker-Demo", 5001, opened)
    assert len(key) == 64 and key == position_key(1001, "Broker-Demo", 5001, opened)
    assert key == position_key(1001, "Broker-Demo", 5001, opened + timedelta(microseconds=400))  # in ms
    others = {
        position_key(1001, "Broker-Demo", 5001, opened + timedelta(milliseconds=1)),  # a ticket given again
        position_key(1002, "Broker-Demo", 5001, opened),
        position_key(1001, "Broker-Live", 5001, opened),
        position_key(1001, "Broker-Demo", 5002, opened),
        position_key(1001, "Broker-Demo", 5001, None, trade_id=1),
    }
    assert key not in others and len(others) == 5
    assert open_position_key(ACCOUNT, position(opened_at=opened)) == position_key(
        ACCOUNT.login, ACCOUNT.server, 9001, opened
    )


def test_a_ticket_given_again_is_not_the_position_a_trade_already_found():
    before = position(ticket=5001, opened_at=NOW - timedelta(days=1))
    again = position(ticket=5001, opened_at=NOW)  # the same ticket and identifier, opened later
    found_before = trade(
        order_ticket=5001, position_ticket=5001, position_key=open_position_key(ACCOUNT, before)
    )
    result = run([again], [found_before])
    assert pairs(result) == set() and [o.position.ticket for o in result.outside_positions] == [5001]
    [closed] = result.closed_trades
    assert closed.vanished and closed.position_key == found_before.position_key
    # A trade that has not found its position yet takes it by ticket, and learns its key.
    [match] = run([again], [trade(order_ticket=5001)]).matches
    assert (match.matched_by, match.position_key) == ("ticket", open_position_key(ACCOUNT, again))
    [outside] = run([again], []).outside_positions
    assert outside.position_key == open_position_key(ACCOUNT, again)


def test_a_closed_trade_is_keyed_by_the_position_it_found_else_by_its_opening_deal():
    history = {5001: [deal(1, 0, 3, "1.08500", "1.00", minutes=-5), deal(2, 1, 0, "1.08600", "1.00")]}
    [closed] = run([], [trade(order_ticket=5001)], history).closed_trades
    assert closed.position_key == position_key(1001, ACCOUNT.server, 5001, NOW - timedelta(minutes=5))
    [closed] = run([], [trade(order_ticket=5001, position_key="k" * 64)], history).closed_trades
    assert closed.position_key == "k" * 64
    [lost] = run([], [trade(order_ticket=5001)], {}).closed_trades
    assert lost.position_key == position_key(1001, ACCOUNT.server, 5001, None, trade_id=1)


@pytest.mark.parametrize("state", ["sent", "pending", "closed"])
def test_only_trades_open_in_our_books_are_concluded_closed(state):
    result = run([], [trade(state=state, order_ticket=5001)], {5001: [deal(2, 1, 4, "1.08000", "1.00")]})
    assert result.closed_trades == ()
    assert [t.id for t in result.unmatched_trades] == [1]


def test_partial_trade_counts_as_open():
    result = run([], [trade(state="partial", order_ticket=5001)])
    assert [c.trade.id for c in result.closed_trades] == [1]


def test_a_matched_trade_is_not_closed():
    result = run([position(ticket=5001)], [trade(order_ticket=5001)], {5001: [deal(2, 1, 4, "1.08", "0.5")]})
    assert result.closed_trades == ()


# --- snapshot figures ----------------------------------------------------------------------------------


def test_peak_equity_never_decreases():
    peak = None
    seen = []
    for equity in ("10000", "10500", "9000", "10200", "11000", "0"):
        peak = peak_equity(peak, D(equity))
        seen.append(peak)
    assert seen == [D(10000), D(10500), D(10500), D(10500), D(11000), D(11000)]


def test_first_snapshot_peak_is_its_equity():
    assert run().snapshot.peak_equity == D("9800.00")


@pytest.mark.parametrize(
    ("peak", "equity", "drawdown"),
    [
        ("10000", "9250", "7.5"),
        ("10000", "10000", "0"),
        ("8000", "2000", "75"),
        ("0", "0", "0"),
        ("3", "2", "33.33"),
    ],
)
def test_drawdown_percent_from_peak(peak, equity, drawdown):
    assert drawdown_percent(D(peak), D(equity)).quantize(D("0.01")) == D(drawdown).quantize(D("0.01"))


def test_snapshot_figures():
    positions = [position(ticket=9001, volume=D("0.30")), position(ticket=9002, volume=D("1.25"))]
    snap = run(positions, previous_peak=D("12250.00")).snapshot
    assert snap.equity == D("9800.00")
    assert snap.balance == D("10000.00")
    assert snap.peak_equity == D("12250.00")
    assert snap.open_positions == 2
    assert snap.total_lots == D("1.55")
    assert snap.margin_level == D("9800.00")
    assert snap.drawdown_percent == D(20)  # (12250 - 9800) / 12250 * 100


def test_a_new_high_raises_the_peak_and_clears_the_drawdown():
    snap = run(previous_peak=D("9000.00")).snapshot
    assert (snap.peak_equity, snap.drawdown_percent) == (D("9800.00"), D(0))


def test_no_margin_used_keeps_margin_level_none():
    snap = run(account=replace(ACCOUNT, margin=D(0), margin_level=None)).snapshot
    assert snap.margin_level is None


# --- inputs --------------------------------------------------------------------------------------------


def test_a_symbol_without_a_spec_is_refused_not_guessed():
    with pytest.raises(ValueError, match="GBPUSD"):
        run([position(symbol="GBPUSD")])


def test_booked_trade_from_a_trade_row():
    row = Trade(
        id=7,
        symbol="EURUSD",
        side=Side.SELL,
        state=TradeState.PARTIAL,
        magic=MAGIC,
        comment="TG-7",
        requested_volume=D("1.00"),
        requested_price=None,
        requested_sl=D("1.09"),
        requested_tp=None,
        filled_volume=D("0.60"),
        filled_price=D("1.08500"),
        order_ticket=5001,
        position_ticket=5001,
    )
    booked = BookedTrade.from_row(row)
    assert (booked.side, booked.state) == ("sell", "partial")
    assert (booked.expected_volume, booked.expected_price) == (D("0.60"), D("1.08500"))
    assert booked.requested_sl == D("1.09")


def test_a_trade_with_a_known_ticket_is_never_matched_by_tolerance():
    """Its position was closed by hand and a look-alike opened by hand: the trade is closed, the new
    position is outside — the look-alike must not be taken for the trade."""
    booked = trade(order_ticket=5001, position_ticket=5001)
    look_alike = position(ticket=9002)
    closing = {5001: [deal(1, 0, 3, "1.08500", "1.00"), deal(2, 1, 0, "1.08600", "1.00", profit="100")]}
    result = run([look_alike], [booked], closing)
    assert pairs(result) == set()
    assert [o.position.ticket for o in result.outside_positions] == [9002]
    assert [(c.trade.id, c.reason) for c in result.closed_trades] == [(1, "by_hand")]


def test_a_close_whose_final_deal_is_not_in_the_history_yet_is_decided_later():
    # The position is gone, but only the partial close by hand has been reported so far: closing the
    # trade now would book 0.40 of 1.00 lots' price and P&L as the whole.
    history = [
        deal(1, 0, 3, "1.08500", "1.00"),
        deal(2, 1, 0, "1.08600", "0.40", profit="40.00", minutes=5),
    ]
    [closed] = run([], [trade(order_ticket=5001)], {5001: history}).closed_trades
    assert closed.reason is None and closed.close_price is None
    # Once the final deal is in, it is closed with everything.
    history.append(deal(3, 1, 4, "1.08000", "0.60", profit="-300.00", minutes=9))
    [closed] = run([], [trade(order_ticket=5001)], {5001: history}).closed_trades
    assert (closed.reason, closed.closed_volume, closed.profit) == ("sl", D("1.00"), D("-260.00"))
