"""Alerts that fall due together are carried out together: the guards' path at the end of a grace period.

One price move can push a crowd of accounts over their limits at once; their alerts then end within
the same second, and each must close on time. Carried out one by one (`engine.execute_alert`: per close
a claim, an order, a deal look-up and a commit each), 100 alerts of 3 positions closed up to 11 s late
on a 2-core box (bench/guards.py). Here the alerts already due are taken together:

1. each account is read on its terminal (figures and positions), the accounts at once (`executor`);
2. one transaction decides every alert (`engine.decide_on`: cancelled, or its closes written) and claims
   every close (`sent`, with the comment that names it): the intent is on record before any order
   leaves, as in the one-alert path;
3. the closing orders go out, each account's on its own terminal connection, the accounts at once;
4. one transaction records every close whose order filled and ends every alert whose closes have all
   ended (`engine._finish`: its figures, the owner told, the account halted).

Alerts that fall due while a run goes through steps 1-3 are taken by the same task in a run of its
own (up to RUNS_BEFORE_RECORDING runs) before any run is recorded: their orders then wait for no
bookkeeping, only for their own reading and claim.

Anything else (a requote, an order whose outcome is not known, a terminal that failed, a close claimed
too long ago to send safely) is left to the one-alert path, which finds the close `sent` and looks for
its deal on the terminal before anything is sent again. Exactly once holds the same way in both.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from shared.core.db import DbSession, utcnow
from shared.core.executors import Inline
from shared.guards import engine
from shared.guards.risk_settings import risk_settings_many
from shared.models import LIVE_ALERT_STATUSES, Account, AlertClose, DrawdownAlert
from shared.mt5 import constants as mt5c
from shared.mt5.errors import PermanentTerminalError, TerminalError
from shared.mt5.ports import OpenTerminal
from shared.mt5.types import AccountSnapshot, Deal, OrderResult, Position
from shared.reconciliation.sync import AccountToSync

log = logging.getLogger(__name__)

# Alerts per run: those due beyond it are the next run's (the next alert task, or the guard sweep's).
DUE_BATCH = 50
# Runs a task sends before it records them: each run after the first takes the alerts that fell due
# while the one before was being carried out (see execute_due_alerts).
RUNS_BEFORE_RECORDING = 4


@dataclass(frozen=True)
class DueResult:
    first: engine.AlertResult  # the alert the task was sent for
    results: dict[int, engine.AlertResult]  # every alert this run ended (cancelled, executed, failed)
    left: list[int]  # alerts this run decided but could not end: the one-alert path's
    # Why the task's own alert could not be read at its close time (its terminal failed), when it could
    # not: the task reads it again shortly.
    unread: str | None = None


@dataclass
class _Read:
    alert_id: int
    account: AccountToSync
    snapshot: AccountSnapshot | None = None
    positions: list[Position] = field(default_factory=list)
    at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Order:
    """A claimed close, with what its order needs."""

    close_id: int
    alert_id: int
    ticket: int
    symbol: str
    side: str  # the position's side
    volume: Any
    comment: str
    sent_at: datetime
    price: Decimal | None  # the close side's price as the decision read it (None: ask the terminal)


@dataclass(frozen=True)
class _Run:
    """One run's alerts as read, its orders as sent, and when each step ended (monotonic)."""

    reads: dict[int, _Read]
    sent: list[_Sent]
    started: float
    read_at: float
    decided_at: float
    sent_at: float


@dataclass
class _Sent:
    order: _Order
    # None: not sent, or its outcome not known (the close stays `sent` for the one-alert path).
    result: OrderResult | None = None
    deal: Deal | None = None
    # Why the terminal refused the order before sending anything (a PermanentTerminalError): the close
    # fails, as a broker's refusal does.
    refused: str | None = None


def execute_due_alerts(
    session: DbSession,
    alert_id: int,
    *,
    open_terminal: OpenTerminal,
    settings: engine.GuardSettings = engine.DEFAULT_GUARD_SETTINGS,
    notify: engine.Notify = engine.no_notify,
    now: Callable[[], datetime] = utcnow,
    executor: Executor | None = None,
    limit: int = DUE_BATCH,
    max_runs: int = RUNS_BEFORE_RECORDING,
) -> DueResult:
    """Carry out every pending alert already due (at most `limit` a run), this one first, then in
    further runs (at most `max_runs` in all) those that fell due meanwhile. This alert, when
    decided before (`closing`), goes the one-alert path, as do those this run decides but cannot end
    (`DueResult.left`); when this alert's account cannot be read, `DueResult.unread` says why. Raises
    `engine.AlertNotDue` before this alert's close time. Safe to run twice,
    also at once: alerts are taken with FOR UPDATE SKIP LOCKED, closes claimed by a conditional update.

    Every run looks for all the alerts due, not only its own: the tasks of alerts raised together are
    one per group (workers.tasks), and a run that finds its own alert carried out by another still
    takes what that one left (its limit reached)."""
    alert = session.get(DrawdownAlert, alert_id)
    status = alert.status if alert is not None else "gone"
    if alert is not None and status == "pending" and now() < alert.close_at:
        raise engine.AlertNotDue(f"alert {alert_id} closes at {alert.close_at.isoformat()}")
    results: dict[int, engine.AlertResult] = {}
    left: list[int] = []
    due = _due(session, alert_id if status == "pending" else None, now(), limit)
    runs: list[_Run] = []
    while due:
        started = time.monotonic()
        reads = _read_accounts(session, due, open_terminal, executor, now)
        read_at = time.monotonic()
        orders = _decide_and_claim(session, reads, notify)
        decided_at = time.monotonic()
        sent = _send(orders, reads, open_terminal, settings, executor, now)
        runs.append(_Run(reads, sent, started, read_at, decided_at, time.monotonic()))
        if len(runs) >= max_runs:
            break
        # Alerts that fell due while this run read, decided and sent (the other guards processes busy
        # with runs of their own): their orders go out now, before this run's closes are recorded. A
        # run's recording took 0.1-0.6 s in a crowd, and a run due meanwhile waited for it; those
        # closes came up to 0.85 s after their close time (bench/guards.py). Not those read already: an
        # account this task could not read is not read again at once (its alert's task retries).
        due = _due(session, None, now(), limit, exclude=[a for r in runs for a in r.reads])
    for run in runs:
        recorded_from = time.monotonic()
        ended, still = _record(session, run.sent, run.reads, notify, now)
        results.update(ended)
        left.extend(still)
        log.info(
            "carried out %d alert(s) due together, %d close order(s): read %.0f ms, decided %.0f ms, "
            "sent %.0f ms, recorded %.0f ms (after %.0f ms)",
            len(run.reads),
            len(run.sent),
            (run.read_at - run.started) * 1000,
            (run.decided_at - run.read_at) * 1000,
            (run.sent_at - run.decided_at) * 1000,
            (time.monotonic() - recorded_from) * 1000,
            (recorded_from - run.sent_at) * 1000,
        )
    read = runs[0].reads.get(alert_id) if runs else None
    if alert_id not in results and read is not None and read.error is not None:
        return DueResult(engine.AlertResult(alert_id, "pending"), results, left, read.error)
    if status == "closing":
        result = engine.execute_alert(
            session, alert_id, open_terminal=open_terminal, settings=settings, notify=notify, now=now
        )
        return DueResult(result, {**results, alert_id: result}, left)
    first = results.get(alert_id) or engine.AlertResult(alert_id, _status(session, alert_id))
    return DueResult(first, results, left)


def _status(session: DbSession, alert_id: int) -> str:
    return session.scalar(sa.select(DrawdownAlert.status).where(DrawdownAlert.id == alert_id)) or "gone"


def _due(
    session: DbSession, alert_id: int | None, at: datetime, limit: int, exclude: Sequence[int] = ()
) -> list[int]:
    """The pending alerts already due that no other run holds, this one (when given and free) first,
    then the earliest; locked for this run's transaction (FOR UPDATE SKIP LOCKED), which stays open
    until they are decided. Held while their accounts are read: two runs at once then share the crowd
    instead of both reading it and one finding every alert taken (bench/guards.py: reads of 50 accounts
    wasted that way, again and again)."""
    ids = session.scalars(
        sa.select(DrawdownAlert.id)
        .where(
            DrawdownAlert.status == "pending",
            DrawdownAlert.close_at <= at,
            DrawdownAlert.id.not_in(exclude),
        )
        .order_by((DrawdownAlert.id == (alert_id or 0)).desc(), DrawdownAlert.close_at, DrawdownAlert.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return list(ids)


def _read_accounts(
    session: DbSession,
    alert_ids: list[int],
    open_terminal: OpenTerminal,
    executor: Executor | None,
    now: Callable[[], datetime],
) -> dict[int, _Read]:
    """Each alert's account as its terminal reports it now (figures and open positions); by alert id."""
    rows = session.execute(
        sa.select(DrawdownAlert.id.label("alert_id"), *AccountToSync.COLUMNS)
        .join(Account, Account.id == DrawdownAlert.account_id)
        .where(DrawdownAlert.id.in_(alert_ids))
    ).all()
    # The transaction stays open: it holds the alerts (`_due`). The threads only talk to terminals.

    def read(alert_id: int, account: AccountToSync) -> _Read:
        try:
            with open_terminal(account) as terminal:
                snapshot = terminal.account()
                positions = terminal.positions()
        except TerminalError as exc:
            log.warning(
                "alert %s: reading account %s failed (%s: %s)", alert_id, account.id, type(exc).__name__, exc
            )
            return _Read(alert_id, account, error=f"{type(exc).__name__}: {exc}")
        return _Read(alert_id, account, snapshot, positions, now())

    runner = executor or Inline()
    futures = [runner.submit(read, row.alert_id, AccountToSync.from_row(row)) for row in rows]
    return {read.alert_id: read for read in (future.result() for future in futures)}


def _decide_and_claim(session: DbSession, reads: dict[int, _Read], notify: engine.Notify) -> list[_Order]:
    """Decide every alert read (in the transaction that holds them since `_due`), write the closes
    chosen and claim them; committed before any order leaves. What every decision needs is read for
    all of them at once (`engine.Preloaded`)."""
    readable = sorted(alert_id for alert_id, read in reads.items() if read.snapshot is not None)
    if not readable:
        session.commit()
        return []
    alerts = session.scalars(
        sa.select(DrawdownAlert)
        .where(DrawdownAlert.id.in_(readable), DrawdownAlert.status == "pending")
        .order_by(DrawdownAlert.id)
    ).all()
    account_ids = {alert.account_id for alert in alerts}
    accounts = {
        account.id: account
        for account in session.scalars(sa.select(Account).where(Account.id.in_(account_ids)))
    }
    preloaded = engine.Preloaded(
        settings=risk_settings_many(session, account_ids),
        states=engine.locked_states(session, sorted(account_ids), utcnow()),
        trades=engine.trades_by_positions(
            session,
            [(reads[alert.id].account.id, p.ticket) for alert in alerts for p in reads[alert.id].positions],
        ),
    )
    decided: list[int] = []
    for alert in alerts:
        read = reads[alert.id]
        assert read.snapshot is not None and read.at is not None
        account = accounts[alert.account_id]
        tell = engine.teller(session, notify, account.owner_id, account.id, alert.id)
        outcome = engine.decide_on(
            session,
            alert,
            account,
            read.snapshot,
            read.positions,
            read.at,
            tell,
            commit=False,
            preloaded=preloaded,
        )
        if not isinstance(outcome, engine.AlertResult):
            decided.append(alert.id)
    if preloaded.closes:
        engine.write_closes(session, preloaded.closes, decided)
    if not decided:
        session.commit()
        return []
    at = utcnow()
    claimed = session.execute(
        sa.update(AlertClose)
        .where(AlertClose.alert_id.in_(decided), AlertClose.state == "pending")
        .values(state="sent", attempts=AlertClose.attempts + 1, sent_at=at)
        .returning(
            AlertClose.id,
            AlertClose.alert_id,
            AlertClose.position_ticket,
            AlertClose.symbol,
            AlertClose.side,
            AlertClose.volume,
            AlertClose.comment,
        )
        .execution_options(synchronize_session=False)
    ).all()
    # The price each order goes at: the position's current price as the decision read it a moment ago
    # (the close side's: the bid for a buy), one terminal call less per close. A price that has moved
    # since is a requote, and the one-alert path sends again at a fresh quote.
    prices = {
        (alert_id, position.ticket): position.price_current
        for alert_id, read in reads.items()
        for position in read.positions
    }
    orders = [
        _Order(
            row.id,
            row.alert_id,
            row.position_ticket,
            row.symbol,
            row.side,
            row.volume,
            row.comment,
            at,
            prices.get((row.alert_id, row.position_ticket)),
        )
        for row in sorted(claimed, key=lambda row: row.id)
    ]
    for order in orders:
        engine._audit(
            session,
            "position.close_sent",
            "alert",
            order.alert_id,
            close_id=order.close_id,
            price=order.price,
        )
    session.commit()  # the intent, before any order is sent
    return orders


def _send(
    orders: Sequence[_Order],
    reads: dict[int, _Read],
    open_terminal: OpenTerminal,
    settings: engine.GuardSettings,
    executor: Executor | None,
    now: Callable[[], datetime],
) -> list[_Sent]:
    """Send each claimed close's order: an account's one after the other on its connection, the
    accounts at once. A close whose send would start later than `send_after_claim_seconds` after its
    claim is not sent here (its send could outlast the in-flight window, and a look after the window
    take it for lost and send it again): the one-alert path sends it, claimed afresh."""
    by_alert: dict[int, list[_Order]] = defaultdict(list)
    for order in orders:
        by_alert[order.alert_id].append(order)

    def send_all(account: AccountToSync, orders: list[_Order]) -> list[_Sent]:
        sent = [_Sent(order) for order in orders]
        try:
            with open_terminal(account) as terminal:
                quotes: dict[str, Any] = {}
                for item in sent:
                    order = item.order
                    if (now() - order.sent_at).total_seconds() > settings.send_after_claim_seconds:
                        continue  # not sent in time: left to the one-alert path (no result)
                    price = order.price
                    if price is None:
                        quote = quotes.get(order.symbol) or terminal.quote(order.symbol)
                        quotes[order.symbol] = quote
                        price = quote.bid if order.side == "buy" else quote.ask
                    request = terminal.market_order_request(
                        symbol=order.symbol,
                        side="sell" if order.side == "buy" else "buy",
                        volume=order.volume,
                        price=price,
                        sl=None,
                        tp=None,
                        deviation_points=settings.deviation_points,
                        magic=settings.magic,
                        comment=order.comment,
                        position=order.ticket,
                    )
                    try:
                        item.result = terminal.send_order(request)
                    except PermanentTerminalError as exc:
                        # Nothing was sent (mt5.errors.classify): no retry will cure it (algo trading
                        # off, say), and the owner must hear that the close failed.
                        item.refused = f"the terminal refused the close: {exc}"
                filled = [item.order.ticket for item in sent if item.result is not None and item.result.done]
                if filled:
                    deals = terminal.deals_for_positions(filled)
                    for item in sent:
                        if item.result is not None and item.result.done:
                            item.deal = engine.deal_made(
                                deals.get(item.order.ticket, []), item.result.deal, item.order.comment
                            )
        except TerminalError as exc:
            # The order in flight may or may not have been made: its close stays `sent`, for the
            # one-alert path to look for its deal before sending anything again.
            log.warning("account %s: closing failed (%s: %s)", account.id, type(exc).__name__, exc)
        return sent

    runner = executor or Inline()
    futures = [
        runner.submit(send_all, reads[alert_id].account, items) for alert_id, items in by_alert.items()
    ]
    return [item for future in futures for item in future.result()]


def _record(
    session: DbSession,
    sent: Sequence[_Sent],
    reads: dict[int, _Read],
    notify: engine.Notify,
    now: Callable[[], datetime],
) -> tuple[dict[int, engine.AlertResult], list[int]]:
    """Record the filled closes, mark the requoted ones for another try and the refused ones failed,
    and end every alert decided here whose closes have all ended; one transaction. Returns the alerts
    ended, and those still closing (a close left to the one-alert path)."""
    owners = dict(
        session.execute(
            sa.select(Account.id, Account.owner_id).where(
                Account.id.in_({r.account.id for r in reads.values()})
            )
        ).all()
    )
    # Locked and read as they are now: this run's sends took time, and a close may have moved on since
    # its claim (below).
    rows = {
        row.id: row
        for row in session.scalars(
            sa.select(AlertClose)
            .where(AlertClose.id.in_([item.order.close_id for item in sent]))
            .order_by(AlertClose.id)
            .with_for_update()
        )
    }
    filled: list[engine.Filled] = []
    for item in sent:
        row, result = rows[item.order.close_id], item.result
        if row.state != "sent" or row.sent_at != item.order.sent_at:
            # Moved on since this run claimed it: past the in-flight window another attempt (the one-
            # alert path) looked for its deal and sent it again, or recorded it. That attempt's record
            # stands; writing this run's over it could reopen a close whose order is on its way.
            continue
        if item.refused is not None:
            engine.close_failed(session, row, item.refused)
            continue
        if result is None:
            continue  # outcome not known, or not sent: stays `sent` for the one-alert path
        row.retcode = result.retcode
        if result.done:
            deal = item.deal
            pnl = deal.profit + deal.commission + deal.swap if deal is not None else None
            deal_ticket = deal.ticket if deal is not None else result.deal
            if result.retcode == mt5c.TRADE_RETCODE_DONE_PARTIAL:
                # The rest of the position is still open: the part recorded, the rest left to the
                # one-alert path (the close `pending`, its alert not ended). The close is locked here
                # and was checked as this run claimed it, so the write takes.
                engine.closed_in_part(session, row, result.price, pnl, deal_ticket, result.volume)
                continue
            filled.append(engine.Filled(row, result.price, pnl, deal_ticket))
        elif result.retcode in engine._NEW_PRICE:
            row.state = "pending"
            engine._audit(
                session,
                "position.close_requoted",
                "alert",
                row.alert_id,
                close_id=row.id,
                retcode=result.retcode,
            )
        elif result.retcode != mt5c.TRADE_RETCODE_POSITION_CLOSED:
            error = f"broker refused the close: retcode {result.retcode} {result.comment}"
            engine.close_failed(session, row, error)
        # POSITION_CLOSED: closed by something else meanwhile; the one-alert path records it as gone.

    def tell_for(row: AlertClose) -> Callable[..., None]:
        read = reads[row.alert_id]
        return engine.teller(session, notify, owners[read.account.id], read.account.id, row.alert_id)

    engine.closed_many(session, filled, tell_for, now)
    session.flush()

    results: dict[int, engine.AlertResult] = {}
    decided = sorted({read.alert_id for read in reads.values() if read.snapshot is not None})
    # Locked as the one-alert path's end locks each (alert, then the account's guard state).
    alerts = session.scalars(
        sa.select(DrawdownAlert)
        .where(DrawdownAlert.id.in_(decided))
        .order_by(DrawdownAlert.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    closes: dict[int, list[AlertClose]] = defaultdict(list)
    for row in session.scalars(
        sa.select(AlertClose)
        .where(AlertClose.alert_id.in_(decided))
        .order_by(AlertClose.id)
        .execution_options(populate_existing=True)
    ):
        closes[row.alert_id].append(row)
    ending: list[DrawdownAlert] = []
    left: list[DrawdownAlert] = []
    for alert in alerts:
        if alert.status not in LIVE_ALERT_STATUSES:
            results[alert.id] = engine.AlertResult(alert.id, alert.status)  # cancelled at its decision
        elif alert.status == "closing":
            ended = all(row.state in engine.FINAL_CLOSE_STATES for row in closes[alert.id])
            (ending if ended else left).append(alert)
    account_ids = {alert.account_id for alert in ending}
    preloaded = engine.Preloaded(
        settings=risk_settings_many(session, account_ids),
        states=engine.locked_states(session, sorted(account_ids), utcnow()),
    )
    for alert in ending:
        read = reads[alert.id]
        tell = engine.teller(session, notify, owners[read.account.id], read.account.id, alert.id)
        results[alert.id] = engine._finish(
            session, alert, closes[alert.id], tell, commit=False, preloaded=preloaded
        )
    session.commit()
    return results, [alert.id for alert in left]
