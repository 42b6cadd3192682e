"""Executing approved signals on the account's MT5 terminal.

The rules (retcode classification, pre-trade checks) are pure functions in `shared.execution.rules`;
`execute_signal` is the I/O edge: it reloads the signal, claims the trade under a lock, checks, sends,
and records.

Never two orders for one signal:
- one `trades` row per signal (unique), and its `comment` ("TG-<id>") plus TradeGuard's magic number
  go out with the order;
- the row is committed as `sent` *before* order_send, so whoever finds a `sent` trade knows an order
  may exist and looks for it (positions, then deal history) before it ever sends again;
- the send happens under a lock that dies with its holder, so a second worker never sends while the
  first is still waiting for the terminal's answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shared.audit import trail
from shared.core.config import DEFAULT_MAGIC
from shared.core.db import DbSession, dialect_insert, utcnow
from shared.core.locks import Busy, exclusive
from shared.core.queue import Queue
from shared.execution import risk
from shared.execution.errors import TerminalRetryLater
from shared.execution.rules import Outcome, classify_retcode, pre_trade_problems, trade_comment
from shared.guards.risk_settings import OrderGuard, guard_now, order_guard_of
from shared.models import Account, Approval, Side, Signal, SignalStatus, Trade, TradeState
from shared.mt5.errors import OrderOutcomeUnknown, SymbolNotFound
from shared.mt5.ports import OpenTerminal, TerminalPort
from shared.notifications import events, webhooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionSettings:
    magic: int = DEFAULT_MAGIC
    deviation_points: int = 20
    max_price_retries: int = 3
    # After a lost reply, how long to keep looking for the order before concluding it was never made.
    unknown_outcome_grace_seconds: float = 3.0
    # The longest an order_send may take; with the grace, how long after sending absence is not proof.
    terminal_timeout_seconds: float = 10.0
    lock_dir: Path = Path("instance/locks")


_UNFINISHED = (TradeState.PENDING, TradeState.SENT)  # an order may still be sent, or may exist


def _record(session: DbSession, trade: Trade, action: str, **meta: Any) -> None:
    trail.record(
        session,
        actor_type=trail.SYSTEM,
        actor_id=None,
        action=action,
        target_type="trade",
        target_id=trade.id,
        meta={"signal_id": trade.signal_id, "state": trade.state.value, **meta},
    )


def _notify(session: DbSession, queue: Queue | None, trade: Trade, event: str) -> None:
    """Tell the owner's webhooks what became of the trade, in the transaction that records it."""
    if queue is None:  # a caller without a task queue (a script, a test of execution alone)
        return
    webhooks.notify(
        session,
        queue,
        trade.owner_id,
        event,
        {
            "trade_id": trade.id,
            "signal_id": trade.signal_id,
            "account_id": trade.account_id,
            "symbol": trade.symbol,
            "side": trade.side,
            "state": trade.state,
            "requested_volume": trade.requested_volume,
            "filled_volume": trade.filled_volume,
            "filled_price": trade.filled_price,
            "order_ticket": trade.order_ticket,
            "position_ticket": trade.position_ticket,
            "retcode": trade.retcode,
            "failure_reason": trade.failure_reason,
        },
    )


def _claim_trade(session: DbSession, signal_id: int, settings: ExecutionSettings) -> Trade | None:
    """The trade for an approved signal, made on first call. None when there is nothing to do.

    Made by one INSERT that also looks up the approval and does nothing when the signal has its trade
    already (an earlier attempt, or a duplicate message a moment ago): no savepoint and no look-ups
    first, four round trips fewer before the order goes out (bench/approval.py)."""
    signal = session.get(Signal, signal_id)
    if signal is None or signal.status != SignalStatus.APPROVED:
        return None
    insert = (
        dialect_insert(session.get_bind())(Trade)
        .values(
            signal_id=signal.id,
            approval_id=sa.select(Approval.id).where(Approval.signal_id == signal_id).scalar_subquery(),
            account_id=signal.account_id,
            owner_id=signal.owner_id,
            symbol=signal.instrument,
            side=signal.side,
            magic=settings.magic,
            requested_volume=signal.volume,
            requested_price=None,
            requested_sl=signal.sl,
            requested_tp=signal.tp,
        )
        # No conflict target: a signal's trade and its approval's are one row, and under a race
        # Postgres may meet the duplicate on either unique index first (on approval_id it would raise
        # if only signal_id were named).
        .on_conflict_do_nothing()
        .returning(Trade)
    )
    trade = session.scalars(insert).one_or_none()
    if trade is None:
        return session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
    trade.comment = trade_comment(trade.id)
    _record(session, trade, "trade.created")
    session.commit()
    return trade


# Trade servers keep their own clock (often UTC+2 or +3): search deal history this far either side.
_SERVER_CLOCK_SLACK = timedelta(days=1)


def _find_sent_order(terminal: TerminalPort, trade: Trade) -> Any | None:
    """A position or a deal carrying this trade's magic and comment, if the order exists.

    Any deal entry counts: on a netting account an order that reduces or reverses a position leaves
    an OUT or INOUT deal, not an IN one."""
    for position in terminal.positions(trade.symbol):
        if position.magic == trade.magic and position.comment == trade.comment:
            return position
    since = (trade.sent_at or trade.created_at) - _SERVER_CLOCK_SLACK
    for deal in terminal.deals(since, utcnow() + _SERVER_CLOCK_SLACK):
        if deal.magic == trade.magic and deal.comment == trade.comment:
            return deal
    return None


def _still_in_flight(trade: Trade, settings: ExecutionSettings) -> bool:
    """Whether an order sent at `sent_at` could still be on its way (an in-flight call outlives the
    worker that made it: a remote terminal finishes order_send even if the caller died)."""
    if trade.sent_at is None:
        return False
    lease = timedelta(seconds=settings.terminal_timeout_seconds + settings.unknown_outcome_grace_seconds)
    return utcnow() < trade.sent_at + lease


def _fill_from_found(trade: Trade, found: Any) -> None:
    """Record a fill found on the terminal: an open position, or the opening deal of one."""
    if hasattr(found, "identifier"):  # a position: its identifier is the opening order's ticket
        trade.filled_price = Decimal(str(found.price_open))
        trade.order_ticket = found.identifier
        trade.position_ticket = found.identifier
    else:  # a deal
        trade.filled_price = Decimal(str(found.price))
        trade.order_ticket = found.order
        trade.deal_ticket = found.ticket
        trade.position_ticket = found.position_id
    trade.filled_volume = Decimal(str(found.volume))
    trade.state = TradeState.FILLED if trade.filled_volume >= trade.requested_volume else TradeState.PARTIAL
    trade.filled_at = utcnow()


def execute_signal(
    session: DbSession,
    signal_id: int,
    *,
    engine: sa.Engine,
    open_terminal: OpenTerminal,
    settings: ExecutionSettings,
    sleep: Callable[[float], None] = time.sleep,
    queue: Queue | None = None,
) -> Trade | None:
    """Execute one approved signal at most once. Safe to call again at any point, also concurrently.
    With a `queue`, the fill or rejection is sent to the owner's webhooks (trade.filled, trade.rejected)."""
    trade = _claim_trade(session, signal_id, settings)
    if trade is None or trade.state not in (TradeState.PENDING, TradeState.SENT):
        return trade
    with _trade_lock(engine, f"trade:{trade.id}", settings):
        session.refresh(trade)
        if trade.state not in (TradeState.PENDING, TradeState.SENT):
            return trade  # another worker finished it while we waited for the lock
        # The attempt that was due is this one. Written with this attempt's next commit; should it fail
        # before any, the task records the next retry (or gives up, which clears it).
        trade.next_retry_at = None
        account = session.get(Account, trade.account_id)
        assert account is not None
        with open_terminal(account) as terminal:
            if trade.state == TradeState.SENT:
                # An earlier attempt died or lost its reply after sending: look before sending again.
                found = _find_sent_order(terminal, trade)
                if found is None and _still_in_flight(trade, settings):
                    # Absence proves nothing yet: the first attempt's order may still be executing.
                    raise TerminalRetryLater(f"trade {trade.id}: the last order may still be in flight")
                if found is None and settings.unknown_outcome_grace_seconds > 0:
                    sleep(settings.unknown_outcome_grace_seconds)
                    found = _find_sent_order(terminal, trade)
                if found is not None:
                    _fill_from_found(trade, found)
                    _record(session, trade, "trade.found_after_lost_reply", volume=str(trade.filled_volume))
                    _notify(session, queue, trade, events.TRADE_FILLED)
                    session.commit()
                    return trade
                trade.state = TradeState.PENDING
                _record(session, trade, "trade.not_found_after_lost_reply")
                session.commit()
            guard = order_guard_of(session, trade.account_id)
            with _account_orders_lock(engine, trade.account_id, guard, settings):
                _send(session, trade, terminal, settings, queue, guard)
    return trade


def _account_orders_lock(
    engine: sa.Engine, account_id: int, guard: OrderGuard, settings: ExecutionSettings
) -> AbstractContextManager[None]:
    """While a limit counts the account's positions or recent orders, its orders are checked and sent one
    at a time: two workers each counting 19 open positions under a limit of 20 would both send. Busy
    (TerminalRetryLater, the task retries) while another order of the account is on its way; no lock at
    all while no such limit is set (the default), so orders of one account go out in parallel."""
    if risk.needs_positions(guard.orders) or risk.needs_recent_orders(guard.orders):
        return _trade_lock(engine, f"account-orders:{account_id}", settings)
    return nullcontext()


@contextmanager
def _trade_lock(engine: sa.Engine, name: str, settings: ExecutionSettings) -> Iterator[None]:
    """The trade's lock, or TerminalRetryLater (the task retries) when another worker holds it."""
    try:
        with exclusive(engine, name, lock_dir=settings.lock_dir):
            yield
    except Busy as exc:  # raised on entry only: nothing under the lock raises Busy
        raise TerminalRetryLater(f"{name} is being executed by another worker") from exc


def _send(
    session: DbSession,
    trade: Trade,
    terminal: TerminalPort,
    settings: ExecutionSettings,
    queue: Queue | None,
    guard: OrderGuard,
) -> None:
    signal = trade.signal
    if trade.comment is None:
        # Named as the trade was claimed (_claim_trade): an order without it could never be found again,
        # so none is sent (an unclassified error: counted, retried, then the trade fails).
        raise RuntimeError(f"trade {trade.id} has no comment: refusing to send an order it cannot find")
    # The guards first (`guard`, one small read): a halted account or a blocked symbol costs no terminal
    # call.
    refused = _guard_refusals(trade, guard)
    if refused:
        _reject_before_sending(session, trade, refused, queue)
        return
    # The specification and the first quote in one round trip; after a requote, a fresh quote.
    try:
        spec, quote = terminal.symbol_and_quote(trade.symbol)
    except SymbolNotFound as exc:
        _reject_unknown_symbol(session, trade, exc, queue)
        return
    figures = _order_limit_figures(session, trade, terminal, guard)
    for attempt in range(settings.max_price_retries + 1):
        if attempt:
            try:
                quote = terminal.quote(trade.symbol)
            except SymbolNotFound as exc:  # the broker dropped it since: no order was sent for it
                _reject_unknown_symbol(session, trade, exc, queue)
                return
        problems = pre_trade_problems(
            side=trade.side.value,
            volume=trade.requested_volume,
            sl=trade.requested_sl,
            tp=trade.requested_tp,
            bid=quote.bid,
            ask=quote.ask,
            rules=spec,
            expires_at=signal.expires_at,
            now=utcnow(),
        )
        price = quote.ask if trade.side == Side.BUY else quote.bid
        problems += risk.order_limit_problems(
            symbol=trade.symbol,
            volume=trade.requested_volume,
            price=price,
            sl=trade.requested_sl,
            limits=guard.orders,
            spec=spec,
            **figures,
        )
        # The guards again, as they are now, their state locked until the commit below: a halt or an
        # alert committed since the first look must not let this order out (see `guard_now`).
        problems += _guard_refusals(trade, guard_now(session, trade.account_id, guard))
        if problems:
            _reject_before_sending(session, trade, problems, queue)
            return
        request = terminal.market_order_request(
            symbol=trade.symbol,
            side=trade.side.value,
            volume=trade.requested_volume,
            price=price,
            sl=trade.requested_sl,
            tp=trade.requested_tp,
            deviation_points=settings.deviation_points,
            magic=trade.magic,
            comment=trade.comment,
        )
        # Committed before sending: if this process dies during order_send, whoever comes next
        # sees `sent` and looks for the order instead of sending a second one.
        trade.state = TradeState.SENT
        # The price asked of the broker on this attempt: what slippage is measured against. The
        # strategy's own price, if it gave one, stays on the signal.
        trade.requested_price = price
        trade.attempts += 1
        trade.sent_at = utcnow()
        _record(session, trade, "trade.sent", attempt=trade.attempts, price=str(price))
        session.commit()
        try:
            result = terminal.send_order(request)
        except OrderOutcomeUnknown:
            log.warning("trade %s: order_send outcome unknown; will look for it before resending", trade.id)
            raise
        trade.retcode = result.retcode
        outcome = classify_retcode(result.retcode)
        if outcome in (Outcome.FILLED, Outcome.PARTIAL):
            trade.filled_volume = result.volume
            trade.filled_price = result.price
            trade.order_ticket = result.order
            trade.deal_ticket = result.deal
            trade.position_ticket = result.order  # MT5: a position's identifier is its opening order
            trade.filled_at = utcnow()
            trade.state = TradeState.FILLED if outcome == Outcome.FILLED else TradeState.PARTIAL
            _record(
                session,
                trade,
                f"trade.{trade.state.value}",
                retcode=result.retcode,
                volume=str(result.volume),
                price=str(result.price),
                requested_price=str(price),
            )
            _notify(session, queue, trade, events.TRADE_FILLED)
            session.commit()
            return
        if outcome == Outcome.NEW_PRICE:
            # Nothing was filled: safe to try again at a fresh price, a bounded number of times.
            trade.state = TradeState.PENDING
            _record(session, trade, "trade.requoted", retcode=result.retcode, attempt=trade.attempts)
            session.commit()
            continue
        if outcome == Outcome.UNKNOWN:
            session.commit()  # stays `sent`: the next attempt looks for it first
            raise TerminalRetryLater(f"trade {trade.id}: retcode {result.retcode}, outcome unknown")
        trade.state = TradeState.REJECTED
        trade.failure_reason = f"broker rejected the order: retcode {result.retcode} {result.comment}"[:500]
        _record(session, trade, "trade.rejected", retcode=result.retcode, comment=result.comment)
        _notify(session, queue, trade, events.TRADE_REJECTED)
        session.commit()
        return
    trade.state = TradeState.REJECTED
    trade.failure_reason = f"price moved on each of {settings.max_price_retries + 1} attempts"
    _record(session, trade, "trade.rejected", reason=trade.failure_reason)
    _notify(session, queue, trade, events.TRADE_REJECTED)
    session.commit()


def _guard_refusals(trade: Trade, guard: OrderGuard) -> list[str]:
    return risk.guard_problems(
        symbol=trade.symbol,
        halted=guard.halted_at is not None,
        halted_reason=guard.halted_reason,
        blocked_symbols=guard.blocked_symbols,
        live_alert=guard.live_alert,
    )


# How far back `max_orders_per_minute` counts the account's orders.
_ORDER_RATE_WINDOW = timedelta(seconds=60)


def _order_limit_figures(
    session: DbSession, trade: Trade, terminal: TerminalPort, guard: OrderGuard
) -> dict[str, Any]:
    """What the account's order limits read besides the order itself, each read only while a limit
    needs it, so that with no limit set (the default) an order costs no terminal call and no query more:
    the terminal's open positions (all of them, those opened outside TradeGuard included), the account's
    equity, and its orders sent in the last minute (this trade's own earlier attempt not counted)."""
    limits = guard.orders
    figures: dict[str, Any] = {}
    if risk.needs_positions(limits):
        figures["open_positions"] = [(position.symbol, position.volume) for position in terminal.positions()]
    if risk.needs_equity(limits, trade.requested_sl):
        figures["equity"] = terminal.account().equity
    if risk.needs_recent_orders(limits):
        figures["orders_last_minute"] = session.scalar(
            sa.select(sa.func.count())
            .select_from(Trade)
            .where(
                Trade.account_id == trade.account_id,
                Trade.sent_at >= utcnow() - _ORDER_RATE_WINDOW,
                Trade.id != trade.id,
            )
        )
    return figures


def _reject_before_sending(
    session: DbSession, trade: Trade, problems: list[str], queue: Queue | None
) -> None:
    """The trade is rejected for `problems` found before its order was sent (none was, on this attempt)."""
    trade.state = TradeState.REJECTED
    trade.failure_reason = "; ".join(problems)[:500]
    _record(session, trade, "trade.rejected_pre_trade", problems=problems)
    _notify(session, queue, trade, events.TRADE_REJECTED)
    session.commit()


def _reject_unknown_symbol(
    session: DbSession, trade: Trade, exc: SymbolNotFound, queue: Queue | None
) -> None:
    """A symbol the terminal does not know is the signal's mistake (or a name the broker spells with a
    suffix), not the terminal's failure: the trade is rejected with what the terminal said, as the other
    pre-trade checks reject, and no retry could change it."""
    _reject_before_sending(session, trade, [f"unknown symbol {trade.symbol}: {exc}"], queue)


def record_retry(
    session: DbSession,
    signal_id: int,
    error: str,
    *,
    retry_at: datetime,
    engine: sa.Engine,
    settings: ExecutionSettings,
) -> Trade | None:
    """Show on the unfinished trade why its attempt stopped (`error`) and when the next one is due
    (`retry_at`), as the task schedules it: otherwise the owner sees a trade that sits `pending` with no
    reason. Not a change of state, so not audited (the errors nobody classified are, by
    `count_failed_attempt`).

    Written under the trade's lock, so that it cannot land on a trade another worker is finishing at that
    moment; a trade held by another worker (a duplicate message) is left to that worker, which records its
    own. None when the signal has no trade."""

    def show_retry(trade: Trade) -> None:
        trade.last_error = error[:500]
        trade.next_retry_at = retry_at

    return _update_unfinished(session, signal_id, show_retry, engine=engine, settings=settings)


def give_up(
    session: DbSession, signal_id: int, reason: str, *, engine: sa.Engine, settings: ExecutionSettings
) -> Trade | None:
    """Mark the trade failed after the last retry — only while it is `pending`, under its lock, and
    with a conditional UPDATE: an attempt that is sending right now (or has sent) must never be
    overwritten, since a failed trade must never hide a live position. A `sent` trade stays `sent`
    for the next attempt or for reconciliation to settle."""
    trade = session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
    if trade is None:
        return trade
    if trade.state != TradeState.PENDING:
        if trade.next_retry_at is not None:
            # No more attempts are coming for it from this task (a `sent` trade is left to
            # reconciliation): nothing is due.
            session.execute(
                sa.update(Trade)
                .where(Trade.id == trade.id)
                .values(next_retry_at=None)
                .execution_options(synchronize_session=False)
            )
            session.commit()
            session.refresh(trade)
        return trade
    try:
        with exclusive(engine, f"trade:{trade.id}", lock_dir=settings.lock_dir):
            changed = session.execute(
                sa.update(Trade)
                .where(Trade.id == trade.id, Trade.state == TradeState.PENDING)
                .values(
                    state=TradeState.FAILED,
                    failure_reason=reason[:500],
                    next_retry_at=None,
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if changed:
                session.refresh(trade)
                _record(session, trade, "trade.failed", reason=reason)
            session.commit()
    except Busy:
        pass  # another attempt is working on it: it decides
    session.refresh(trade)
    return trade


def count_failed_attempt(
    session: DbSession,
    signal_id: int,
    error: str,
    *,
    started_at: datetime,
    engine: sa.Engine,
    settings: ExecutionSettings,
) -> Trade | None:
    """Count an attempt that ended in an error nobody classified (a terminal reply of the wrong shape,
    a bug) in the trade's `attempts`, and audit it. The count lives on the row because it must outlive
    the task message: the safety net's fresh message starts Celery's own retry count at 0 again, so a
    failure counted only there would be retried for ever. The caller compares `attempts` with its limit
    and calls `give_up` once it is reached.

    `attempts` also counts every order sent (`_send`): an attempt that got as far as sending (`sent_at`
    at or after `started_at`, when the attempt began) was counted then and is not counted twice. Only an
    unfinished trade is counted, under its lock; a trade another worker holds right now is left to that
    worker. None when the signal has no trade (the error came before it was made)."""

    def count(trade: Trade) -> None:
        if trade.sent_at is None or trade.sent_at < started_at:
            trade.attempts += 1
        _record(session, trade, "trade.attempt_failed", attempt=trade.attempts, error=error[:500])

    trade = _update_unfinished(session, signal_id, count, engine=engine, settings=settings)
    if trade is not None:
        session.refresh(trade)
    return trade


def _update_unfinished(
    session: DbSession,
    signal_id: int,
    update: Callable[[Trade], None],
    *,
    engine: sa.Engine,
    settings: ExecutionSettings,
) -> Trade | None:
    """Apply `update` to the signal's trade while it is unfinished (pending or sent), under the trade's
    lock, and commit: it cannot land on a trade another worker is finishing at that moment, and a trade
    another worker holds right now (a duplicate message) is left to that worker. The trade, or None when
    the signal has none."""
    trade = session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
    if trade is None or trade.state not in _UNFINISHED:
        return trade
    try:
        with exclusive(engine, f"trade:{trade.id}", lock_dir=settings.lock_dir):
            session.refresh(trade)
            if trade.state in _UNFINISHED:
                update(trade)
            session.commit()
    except Busy:
        pass
    return trade
