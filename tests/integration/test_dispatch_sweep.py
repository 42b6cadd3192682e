"""Beat's safety net (`dispatch.signals_to_dispatch`) at its boundaries (issue 17: mutants no test noticed).

Decided, as the code has it: the sweep takes what was decided, or last touched, strictly *before* its
cutoff; a signal decided (or a trade updated) exactly at the cutoff waits for the next sweep. A signal
counts as "without a trade" only when it has no trade of its own, whatever trades other signals have.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.execution.dispatch import signals_to_dispatch
from shared.models import Signal, Trade, TradeState

CUTOFF = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
JUST_BEFORE = CUTOFF - timedelta(microseconds=1)


def sweep(db_session):
    return sorted(signals_to_dispatch(db_session, cutoff=CUTOFF, attempt_limit=5))


def test_signals_decided_strictly_before_the_cutoff_are_swept_one_decided_at_it_waits(approved, db_session):
    before, at = approved(), approved()
    db_session.get(Signal, before).decided_at = JUST_BEFORE
    db_session.get(Signal, at).decided_at = CUTOFF
    db_session.commit()
    assert sweep(db_session) == [before]


def test_a_signal_counts_as_without_a_trade_only_by_its_own_trade(run, approved, db_session):
    executed, waiting = approved(), approved()
    assert run(executed).state == TradeState.FILLED
    for signal_id in (executed, waiting):
        db_session.get(Signal, signal_id).decided_at = JUST_BEFORE
    db_session.commit()
    assert sweep(db_session) == [waiting]


def test_unfinished_trades_untouched_strictly_before_the_cutoff_are_swept_one_updated_at_it_waits(
    run, approved, db_session
):
    before, at = approved(), approved()
    for signal_id, updated_at in ((before, JUST_BEFORE), (at, CUTOFF)):
        trade = run(signal_id)
        trade.state, trade.updated_at = TradeState.PENDING, updated_at
        db_session.get(Signal, signal_id).decided_at = CUTOFF + timedelta(hours=1)  # not "without a trade"
    db_session.commit()
    assert [t.updated_at for t in db_session.query(Trade).order_by(Trade.signal_id)] == [JUST_BEFORE, CUTOFF]
    assert sweep(db_session) == [before]
