"""The trade timeline's rules (shared.insight.timeline), on plain records: what each record becomes, the
order (time, then a trade's life for entries at the same instant), the broker's clock, and which guard
warnings and alerts belong to a trade."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from shared.insight import timeline as tl

T0 = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


TRADE = tl.TradeFacts(
    id=7,
    account_id=3,
    symbol="EURUSD",
    side="buy",
    state="closed",
    requested_volume=Decimal("1.0000"),
    filled_volume=Decimal("1.0000"),
    filled_price=Decimal("1.0859000000"),
    position_ticket=555,
    sent_at=at(3),
    filled_at=at(4),
    closed_at=at(100),
    close_reason="guard",
    close_price=Decimal("1.0820000000"),
    pnl=Decimal("-390.0000"),
)
SIGNAL = tl.SignalFacts(
    id=11,
    received_at=at(0),
    client_id=2,
    client_name="strategy",
    instrument="EURUSD",
    side="buy",
    volume=Decimal("1.0000"),
    price=None,
    sl=Decimal("1.0800000000"),
    tp=None,
    comment="breakout",
    expires_at=at(600),
)
APPROVAL = tl.ApprovalFacts(
    id=5, at=at(1), user_id=9, email="owner@example.com", decision="approve", reason=None
)


def audit(id: int, seconds: float, action: str, **meta: Any) -> tl.AuditFacts:
    return tl.AuditFacts(id, at(seconds), action, meta)


def alert(id: int = 1, **overrides: Any) -> tl.AlertFacts:
    values: dict[str, Any] = {
        "id": id,
        "created_at": at(50),
        "alert_type": "drawdown",
        "limit_name": "max drawdown",
        "symbol": None,
        "reason": "max drawdown: drawdown 3.0272% (300.0 USD) of 9910.0",
        "currency": "USD",
        "drawdown_percent": Decimal("3.0272"),
        "drawdown_amount": Decimal("300.0000"),
        "threshold_percent": Decimal("2.0000"),
        "equity": Decimal("9610.0000"),
        "margin_level": None,
        "status": "executed",
        "close_at": at(50),
        "executed_at": at(101),
        "positions_closed_count": 1,
        "total_loss": Decimal("390.0000"),
        "details": {"breach_at_close": "drawdown 3%", "equity_at_close": "9610.0"},
        "close": None,
        "close_audit": (),
    }
    values.update(overrides)
    return tl.AlertFacts(**values)


CLOSE = tl.CloseFacts(
    id=21,
    decided_at=at(60),
    position_ticket=555,
    volume=Decimal("1.0000"),
    state="closed",
    attempts=1,
    close_price=Decimal("1.0820000000"),
    pnl=Decimal("-390.0000"),
    error=None,
)


def history(**overrides: Any) -> tl.TradeHistory:
    values: dict[str, Any] = {
        "trade": TRADE,
        "signal": SIGNAL,
        "approval": APPROVAL,
        "audit": (),
        "reconciliation": (),
        "warnings": (),
        "alerts": (),
        "broker_offset_seconds": 0,
        "now": at(1000),
    }
    values.update(overrides)
    return tl.TradeHistory(**values)


def kinds(entries: list[tl.Entry]) -> list[str]:
    return [entry.kind for entry in entries]


def test_the_signal_names_its_client_and_the_approval_its_approver():
    open_trade = replace(TRADE, closed_at=None, state="filled")
    received, approved = tl.build(history(trade=open_trade))
    assert (received.kind, received.at) == ("signal.received", at(0))
    assert received.details == {
        "signal_id": 11,
        "client_id": 2,
        "client": "strategy",
        "instrument": "EURUSD",
        "side": "buy",
        "volume": "1",
        "price": None,
        "sl": "1.08",
        "tp": None,
        "comment": "breakout",
        "expires_at": at(600).isoformat(),
    }
    assert approved.kind == "signal.approved"
    assert approved.details == {
        "approval_id": 5,
        "user_id": 9,
        "by": "owner@example.com",
        "decision": "approve",
        "reason": None,
    }


def test_each_execution_step_of_the_audit_trail_becomes_its_entry():
    trail = [
        audit(1, 2, "trade.created", signal_id=11, state="pending"),
        audit(2, 3, "trade.sent", attempt=1, price="1.08510"),
        audit(3, 3.1, "trade.requoted", retcode=10004, attempt=1),
        audit(4, 3.2, "trade.sent", attempt=2, price="1.0852"),
        audit(5, 3.3, "trade.filled", retcode=10009, volume="1.00", price="1.0859", requested_price="1.0852"),
        audit(6, 3.4, "trade.closed_by_guard", alert_id=1, price="1.082", pnl="-390"),  # the row tells it
        audit(7, 3.5, "trade.something_new"),  # not a kind: left out
    ]
    entries = tl.build(history(trade=replace(TRADE, closed_at=None, state="filled"), audit=trail))
    assert kinds(entries)[2:] == [
        "trade.created",
        "risk.checked",
        "order.sent",
        "order.requoted",
        "risk.checked",
        "order.sent",
        "order.filled",
    ]
    by_kind = {entry.kind: entry for entry in entries}
    sent = [entry for entry in entries if entry.kind == "order.sent"]
    checked = [entry for entry in entries if entry.kind == "risk.checked"]
    assert [(e.details["attempt"], e.details["price"]) for e in sent] == [(1, "1.0851"), (2, "1.0852")]
    # The checks passed at the instant each order went out, and are listed first.
    assert [e.at for e in checked] == [e.at for e in sent]
    assert checked[0].details == {"attempt": 1, "passed": True, "problems": []}
    assert by_kind["order.requoted"].details == {"attempt": 1, "retcode": 10004}
    assert by_kind["order.filled"].details == {
        "found_by": "reply",
        "partial": False,
        "retcode": 10009,
        "volume": "1",
        "price": "1.0859",
        "requested_price": "1.0852",
        "position_ticket": 555,
    }


def test_refusals_rejections_failures_and_fills_found_later():
    refused = tl.build(
        history(
            trade=replace(TRADE, state="rejected", filled_at=None, closed_at=None, sent_at=None),
            audit=[
                audit(1, 2, "trade.created"),
                audit(2, 3, "trade.rejected_pre_trade", problems=["spread 9 pips > 3", "halted"]),
            ],
        )
    )
    assert refused[-1].kind == "risk.refused"
    assert refused[-1].details == {"passed": False, "problems": ["spread 9 pips > 3", "halted"]}

    rejected = tl.build(
        history(
            audit=[
                audit(1, 2, "trade.rejected", retcode=10006, comment="Request rejected"),
                audit(2, 3, "trade.attempt_failed", attempt=2, error="ValueError: odd reply"),
                audit(3, 4, "trade.failed", reason="terminal unreachable"),
                audit(4, 5, "trade.not_found_after_lost_reply"),
            ],
            trade=replace(TRADE, state="failed", filled_at=None, closed_at=None),
        )
    )
    assert [(e.kind, e.details) for e in rejected[2:]] == [
        ("order.rejected", {"retcode": 10006, "comment": "Request rejected", "reason": None}),
        ("order.attempt_failed", {"attempt": 2, "error": "ValueError: odd reply"}),
        ("trade.failed", {"reason": "terminal unreachable"}),
        ("order.lost", {}),
    ]

    found = tl.build(
        history(
            trade=replace(TRADE, closed_at=None, state="partial"),
            audit=[
                audit(1, 4, "trade.found_after_lost_reply", state="filled", volume="1.0000"),
                audit(2, 5, "trade.filled_by_reconciliation", state="partial", volume="0.5", position=555),
            ],
        )
    )
    fills = [entry.details for entry in found if entry.kind == "order.filled"]
    assert [(f["found_by"], f["partial"], f["volume"], f["price"]) for f in fills] == [
        ("terminal", False, "1", "1.0859"),
        ("reconciliation", True, "0.5", "1.0859"),
    ]


def test_reconciliation_events_carry_their_figures():
    def event(id: int, seconds: float, event_type: str, **overrides: Any) -> tl.ReconciliationFacts:
        values: dict[str, Any] = {
            "volume": Decimal("1.0000"),
            "price_open": Decimal("1.0859000000"),
            "sl": None,
            "tp": None,
            "close_reason": None,
            "close_price": None,
            "pnl": None,
            "details": {},
        }
        values.update(overrides)
        return tl.ReconciliationFacts(id, at(seconds), event_type, 555, **values)

    divergences = [
        {
            "kind": "slippage",
            "change": "adverse",
            "expected": "1.0851",
            "actual": "1.0859",
            "difference": "8.0",
            "unit": "pips",
        }
    ]
    events = [
        # Recorded by one sync at one instant: matched before its divergence whatever the ids say.
        event(2, 10, "divergence", details={"divergences": divergences}),
        event(1, 10, "matched", details={"matched_by": "ticket"}),
        event(3, 20, "divergence", details={"cleared": True}),
        event(4, 30, "vanished", details={"summary": "gone"}),
        event(
            5,
            40,
            "closed_outside",
            close_reason="sl",
            close_price=Decimal("1.0800000000"),
            pnl=Decimal("-590.0000"),
            details={"summary": "closed (sl)"},
        ),
    ]
    trade = replace(
        TRADE, closed_at=at(39), close_reason="sl", close_price=Decimal("1.08"), pnl=Decimal(-590)
    )
    entries = tl.build(history(trade=trade, reconciliation=events))
    assert kinds(entries)[2:] == [
        "reconciliation.matched",
        "reconciliation.divergence",
        "reconciliation.divergence",
        "reconciliation.vanished",
        "trade.closed",
        "reconciliation.closed",
    ]
    matched, diverged, cleared = (entry.details for entry in entries[2:5])
    assert matched == {
        "position_ticket": 555,
        "matched_by": "ticket",
        "volume": "1",
        "price_open": "1.0859",
        "sl": None,
        "tp": None,
    }
    assert diverged["cleared"] is False and diverged["divergences"] == [{**divergences[0], "difference": "8"}]
    assert cleared == {"position_ticket": 555, "cleared": True, "divergences": []}
    assert entries[-2].details == {"reason": "sl", "price": "1.08", "pnl": "-590", "alert_id": None}
    assert entries[-1].details == {
        "position_ticket": 555,
        "reason": "sl",
        "price": "1.08",
        "pnl": "-590",
        "volume": "1",
        "summary": "closed (sl)",
    }


def test_the_alert_that_closed_the_trade_from_raised_to_executed():
    closing = alert(
        close=CLOSE,
        close_audit=(
            audit(31, 61, "position.close_sent", close_id=21, price="1.0830"),
            audit(32, 62, "position.close_requoted", close_id=21, retcode=10004),
            audit(33, 63, "position.close_sent", close_id=21, price="1.0820"),
        ),
    )
    warning = audit(
        40,
        30,
        "guard.warning",
        limit="max drawdown",
        level="warning",
        drawdown_percent="1.2100",
        currency="USD",
    )
    entries = tl.build(history(alerts=[closing], warnings=[warning]))
    assert kinds(entries)[2:] == [
        "guard.warning",
        "alert.raised",
        "alert.closing",
        "close.sent",
        "close.requoted",
        "close.sent",
        "trade.closed",
        "alert.executed",
    ]
    details = [entry.details for entry in entries[2:]]
    assert details[0] == {
        "limit": "max drawdown",
        "level": "warning",
        "drawdown_percent": "1.21",
        "currency": "USD",
    }
    assert details[1]["reason"] == closing.reason and details[1]["threshold_percent"] == "2"
    assert details[1]["equity"] == "9610" and details[1]["close_at"] == at(50).isoformat()
    assert details[2] == {
        "alert_id": 1,
        "why": "drawdown 3%",
        "equity": "9610",
        "position_ticket": 555,
        "volume": "1",
    }
    assert [d.get("attempt") for d in details[3:6]] == [1, None, 2]
    assert details[3]["price"] == "1.083" and details[4]["retcode"] == 10004
    assert details[6] == {"reason": "guard", "price": "1.082", "pnl": "-390", "alert_id": 1}
    assert details[7] == {"alert_id": 1, "positions_closed": 1, "total_loss": "390", "currency": "USD"}


def test_warnings_count_only_while_the_trade_was_open():
    warnings = [
        audit(1, 3.5, "guard.warning", limit="a"),  # after the order, before the fill
        audit(2, 4, "guard.warning", limit="b"),  # at the fill
        audit(3, 100, "guard.warning", limit="c"),  # at the close
        audit(4, 101, "guard.warning", limit="d"),  # after it
    ]
    entries = tl.build(history(warnings=warnings))
    assert [e.details["limit"] for e in entries if e.kind == "guard.warning"] == ["b", "c"]
    # Still open: until now.
    still_open = replace(TRADE, closed_at=None, state="filled")
    entries = tl.build(history(trade=still_open, warnings=warnings, now=at(200)))
    assert [e.details["limit"] for e in entries if e.kind == "guard.warning"] == ["b", "c", "d"]
    # Never open (rejected by the broker): none, whenever.
    rejected = replace(TRADE, state="rejected", filled_at=None, closed_at=None)
    assert "guard.warning" not in kinds(tl.build(history(trade=rejected, warnings=warnings)))


def test_open_window_from_the_fill_or_an_order_of_unknown_outcome_to_the_close_or_now():
    assert tl.open_window(TRADE, at(1000)) == (at(4), at(100))
    assert tl.open_window(replace(TRADE, closed_at=None, state="filled"), at(1000)) == (at(4), at(1000))
    unknown = replace(TRADE, state="sent", filled_at=None, closed_at=None)
    assert tl.open_window(unknown, at(1000)) == (at(3), at(1000))
    assert tl.open_window(replace(TRADE, state="rejected", filled_at=None, closed_at=None), at(9)) is None
    assert (
        tl.open_window(replace(TRADE, state="pending", sent_at=None, filled_at=None, closed_at=None), at(9))
        is None
    )


def test_which_alerts_touched_the_trade():
    window = tl.open_window(TRADE, at(1000))
    # Closed (or tried to close) its position: always.
    assert tl.touched(alert(close=CLOSE, created_at=at(-500)), TRADE, window)
    # Live while it was open and would have closed it.
    assert tl.touched(alert(status="cancelled", executed_at=at(60)), TRADE, window)
    assert tl.touched(alert(status="pending", created_at=at(90), executed_at=None), TRADE, window)
    assert tl.touched(alert(status="cancelled", created_at=at(0), executed_at=at(5)), TRADE, window)
    market = alert(status="cancelled", alert_type="market", symbol="EURUSD", executed_at=at(60))
    assert tl.touched(market, TRADE, window)
    # Not: another symbol's market alert, one over before the fill or raised after the close, one that
    # went on to close other positions only, and any alert of a trade that never held a position.
    assert not tl.touched(replace(market, symbol="GBPUSD"), TRADE, window)
    assert not tl.touched(alert(status="cancelled", created_at=at(0), executed_at=at(3)), TRADE, window)
    assert not tl.touched(alert(status="pending", created_at=at(101), executed_at=None), TRADE, window)
    assert not tl.touched(alert(status="executed"), TRADE, window)
    assert not tl.touched(alert(status="cancelled", executed_at=at(60)), TRADE, None)


def test_a_cancelled_alert_shows_raised_and_cancelled_and_no_close():
    cancelled = alert(status="cancelled", executed_at=at(60), details={"cleared_at_equity": "9905.50"})
    other = alert(id=2, status="executed")  # closed other positions only
    entries = tl.build(history(alerts=[cancelled, other]))
    assert [(e.kind, e.details.get("alert_id")) for e in entries[2:]] == [
        ("alert.raised", 1),
        ("alert.cancelled", 1),
        ("trade.closed", None),
    ]
    assert entries[3].details == {"alert_id": 1, "equity": "9905.5"}


def test_ties_follow_a_trades_life_then_the_records_order():
    # Everything at one instant, given in reverse: listed as a trade's life goes.
    same = at(0)
    trade = replace(TRADE, sent_at=same, filled_at=same, closed_at=same)
    entries = tl.build(
        history(
            trade=trade,
            signal=replace(SIGNAL, received_at=same),
            approval=replace(APPROVAL, at=same),
            audit=[
                tl.AuditFacts(3, same, "trade.filled", {"price": "1"}),
                tl.AuditFacts(2, same, "trade.sent", {"attempt": 1}),
                tl.AuditFacts(1, same, "trade.created", {}),
            ],
        )
    )
    assert kinds(entries) == [
        "signal.received",
        "signal.approved",
        "trade.created",
        "risk.checked",
        "order.sent",
        "order.filled",
        "trade.closed",
    ]
    assert len(set(tl.KINDS)) == len(tl.KINDS)


def test_broker_time_is_utc_shifted_by_the_servers_offset_without_an_offset():
    assert tl.broker_time(T0, 7200) == "2026-11-30T16:00:00"
    assert tl.broker_time(T0, 0) == "2026-11-30T14:00:00"
    assert tl.broker_time(T0 + timedelta(microseconds=5), -3600) == "2026-11-30T13:00:00.000005"
    assert tl.broker_time(datetime(2026, 12, 31, 23, 30, tzinfo=UTC), 3 * 3600) == "2027-01-01T02:30:00"
    entries = tl.build(history(broker_offset_seconds=10800))
    assert entries[0].broker_time == "2026-11-30T17:00:00" and entries[0].at == T0
