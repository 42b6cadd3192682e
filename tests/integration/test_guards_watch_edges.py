"""The guards' watch on Postgres (issue 17: each test here was a mutant no test noticed): whom it watches,
what it counts, and its per-process cache of the accounts' views.

Decided, and kept as the code had them:
- an account with nothing open is not watched (its terminal is not opened for it);
- a terminal that fails costs its server's accounts this tick, counted as one failed server;
- an unchanged tick (no sync, reading, halt, alert or settings change) reuses the views it built: the
  watch runs every half second and rebuilding 1,000 accounts' views took longer than that.
"""

from __future__ import annotations

from contextlib import contextmanager
from decimal import Decimal as D

import pytest
import sqlalchemy as sa

from shared.core.db import utcnow
from shared.guards import readings, watch
from shared.guards.settings import RiskSettings, default_settings, validate_settings
from shared.models import Account, AccountRisk, AccountSync, GuardState
from shared.mt5 import constants as mt5c
from shared.mt5.errors import TerminalUnavailable
from shared.mt5.gateway import Gateway
from shared.mt5.sim.terminal import SimTerminal

PIN = (1.08500, 1.08510)
# Warn at 1 %, breach at 2 %: on the demo account's 10,000 USD, 1 lot of EURUSD moves 10 USD a pip.
MAX_DRAWDOWN = {
    "name": "max drawdown",
    "period": "lifetime",
    "reference": "peak_equity",
    "warn_percent": 1,
    "max_percent": 2,
    "action": "close",
    "resume": "manual",
}


@pytest.fixture(autouse=True)
def fresh_watch(monkeypatch):
    """Each test starts with the watch's per-process cache empty, as a new worker does."""
    monkeypatch.setattr(watch, "_cache", {})
    monkeypatch.setattr(watch, "_last_groups", None)
    monkeypatch.setattr(watch, "_settings", {})


@pytest.fixture
def synced(api, db_session, terminal, sync):
    """An account with the 1 %/2 % limit, `lots` of EURUSD bought at PIN, synced and read once."""
    terminal.sim_set_quote("EURUSD", *PIN)

    def make(lots=1.0):
        world = api.setup()
        account_id, login = world["account"]["id"], world["account"]["login"]
        document = default_settings()
        document.update({"grace_seconds": 0, "confirmations": 2, "drawdown_limits": [MAX_DRAWDOWN]})
        db_session.add(AccountRisk(account_id=account_id, settings=validate_settings(document)))
        db_session.commit()
        if lots:
            terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, lots)
        assert sync(account_id).status == "ok"
        outcome = readings.record_synced(db_session, [account_id], notify=lambda *a: None, schedule=None)
        assert outcome[0].status == "ok"
        return account_id

    return make


def opener(terminal, opened=None):
    """Opens the test broker's terminal for an account; records whom it was opened for."""

    @contextmanager
    def open_terminal(account):
        if opened is not None:
            opened.append(account.id)
        with Gateway.from_module(
            SimTerminal(terminal.broker), login=account.login, password="x", server=account.server, timeout=5
        ) as gateway:
            yield gateway

    return open_terminal


def test_the_watch_counts_the_servers_and_accounts_it_looked_at_and_skips_an_account_with_nothing_open(
    synced, terminal, db_session
):
    holding = synced()
    synced(lots=0)  # synced and read, but nothing open: nothing to estimate
    opened = []
    result = watch.watch(db_session, open_terminal=opener(terminal, opened))
    assert result.counts == {"servers": 1, "accounts": 1, "to_read": 0, "breached": 0}
    assert opened == [holding]
    assert (result.to_read, result.breached) == ([], [])
    # The terminal that answered, whose connections the worker then keeps warm (workers.tasks).
    assert result.terminals == [db_session.get(Account, holding).terminal_url]


def test_a_terminal_that_fails_is_counted_and_its_accounts_wait_for_the_next_tick(synced, db_session):
    synced()

    @contextmanager
    def unreachable(account):
        raise TerminalUnavailable("connection refused", call="initialize")
        yield

    result = watch.watch(db_session, open_terminal=unreachable)
    assert result.counts == {"servers_failed": 1, "to_read": 0, "breached": 0}
    assert result.to_read == [] and result.terminals == []


def test_the_watch_reads_the_accounts_its_quotes_push_to_a_warning_or_over_a_maximum_not_one_a_close_halted(
    synced, terminal, db_session
):
    watched_id = synced()
    closed_id = synced()
    blocked_id = synced()
    closed, blocked = db_session.get(GuardState, closed_id), db_session.get(GuardState, blocked_id)
    closed.halted_at, closed.halted_by_alert_id, closed.updated_at = utcnow(), 7, utcnow()
    # Halted by a block: its positions are still open, and a close limit behind the block still acts.
    blocked.halted_at, blocked.updated_at = utcnow(), utcnow()
    db_session.commit()

    assert watch.watch(db_session, open_terminal=opener(terminal)).to_read == []
    terminal.sim_set_quote("EURUSD", 1.08395, 1.08405)  # 10.5 pips on 1 lot: 1.05 %, the warning
    warned = watch.watch(db_session, open_terminal=opener(terminal))
    assert (sorted(warned.to_read), warned.breached) == ([watched_id, blocked_id], [])
    assert warned.counts["accounts"] == 2  # the account a close halted is not looked at
    terminal.sim_set_quote("EURUSD", 1.08290, 1.08300)  # 21 pips: 2.1 %, past the maximum
    breached = watch.watch(db_session, open_terminal=opener(terminal))
    assert sorted(breached.to_read) == sorted(breached.breached) == [watched_id, blocked_id]


def test_the_watch_follows_a_reading_and_the_owners_new_settings_on_the_next_tick(
    synced, terminal, db_session
):
    """The cached view is rebuilt when what it was built from changes: the reading that sent the warning
    (`warned`), then the owner's lower maximum."""
    account_id = synced()
    other_id = synced()
    terminal.sim_set_quote("EURUSD", 1.08395, 1.08405)  # 1.05 %: both at the warning
    assert sorted(watch.watch(db_session, open_terminal=opener(terminal)).to_read) == [account_id, other_id]
    state = db_session.get(GuardState, account_id)
    state.limits = {**state.limits, "max drawdown": {**state.limits["max drawdown"], "warned": True}}
    state.updated_at = utcnow()
    db_session.commit()
    assert watch.watch(db_session, open_terminal=opener(terminal)).to_read == [other_id]
    risk = db_session.get(AccountRisk, account_id)
    document = dict(risk.settings)
    document["drawdown_limits"] = [{**document["drawdown_limits"][0], "warn_percent": 0.5, "max_percent": 1}]
    risk.settings, risk.updated_at = validate_settings(document), utcnow()
    db_session.commit()
    result = watch.watch(db_session, open_terminal=opener(terminal))
    assert (sorted(result.to_read), result.breached) == ([account_id, other_id], [account_id])


def test_an_unchanged_tick_reuses_the_views_it_built(synced, db_session):
    """Nothing changed since the last tick: the same groups, not rebuilt (nor their accounts' views)."""
    account_id = synced()
    first = watch._watched(db_session)
    assert [a.account_id for group in first.values() for a in group.accounts] == [account_id]
    assert watch._watched(db_session) is first
    state = db_session.get(GuardState, account_id)
    state.updated_at = utcnow()
    db_session.commit()
    again = watch._watched(db_session)
    assert again is not first
    assert [a.account_id for group in again.values() for a in group.accounts] == [account_id]


@pytest.fixture
def parsed(monkeypatch):
    """The risk documents the watch parses (`RiskSettings.from_document`), in order."""
    documents = []
    original = RiskSettings.from_document

    def counting(cls, document):
        documents.append(document)
        return original(document)

    monkeypatch.setattr(RiskSettings, "from_document", classmethod(counting))
    return documents


def read_apart(session, account_id):
    """A reading of its own (the watch's check, say): the guard state's timestamp then differs from
    the sync's, which the reading that came with the sync shares."""
    state = session.get(GuardState, account_id)
    state.updated_at = utcnow()
    session.commit()


def view_of(session, account_id):
    return next(
        a for group in watch._watched(session).values() for a in group.accounts if a.account_id == account_id
    )


def test_a_sync_rebuilds_the_accounts_figures_and_keeps_its_parsed_settings(
    synced, sync, terminal, db_session, parsed
):
    """A sync moves only the figures and positions: the settings the view was built with are not parsed
    again (a reconciliation burst touches every account within two seconds)."""
    account_id = synced()
    parsed.clear()  # the reading's own parse
    read_apart(db_session, account_id)
    first = view_of(db_session, account_id)
    assert len(parsed) == 1
    # Written behind the key's back (its timestamp kept): a view that reloads the limits without their
    # key moving would show it.
    db_session.execute(
        sa.update(GuardState.__table__)
        .where(GuardState.__table__.c.account_id == account_id)
        .values(
            limits={"max drawdown": {"reference": "1", "warned": True}},
            updated_at=GuardState.__table__.c.updated_at,  # kept: the column's onupdate would move it
        )
    )
    db_session.commit()
    terminal.sim_set_quote("EURUSD", 1.08400, 1.08410)  # 10 pips on 1 lot: 100 USD less
    assert sync(account_id).status == "ok"
    after = view_of(db_session, account_id)
    assert after.equity_at_sync == first.equity_at_sync - 100
    assert after.positions[0].price_at_sync == D("1.08400")
    assert (after.limits, after.min_margin_level) == (first.limits, first.min_margin_level)
    assert len(parsed) == 1


def test_a_reading_rebuilds_the_limits_from_the_settings_already_parsed(synced, db_session, parsed):
    account_id = synced()
    parsed.clear()  # the reading's own parse
    read_apart(db_session, account_id)
    first = view_of(db_session, account_id)
    # Written behind the key's back (the sync's timestamp kept): a reading that reloads the figures
    # without their key moving would show it.
    db_session.execute(
        sa.update(AccountSync)
        .where(AccountSync.account_id == account_id)
        .values(equity=AccountSync.equity - 1)
    )
    state = db_session.get(GuardState, account_id)
    state.limits = {**state.limits, "max drawdown": {"reference": "12000", "warned": True}}
    state.updated_at = utcnow()
    db_session.commit()
    after = view_of(db_session, account_id)
    assert after.limits == ((D(12000), D(1), D(2), None, True),)
    assert (after.equity_at_sync, after.positions) == (first.equity_at_sync, first.positions)
    assert len(parsed) == 1


def test_new_settings_are_parsed_once_and_an_account_without_any_takes_the_defaults(
    synced, db_session, parsed
):
    account_id = synced()
    parsed.clear()  # the reading's own parse
    view_of(db_session, account_id)
    risk = db_session.get(AccountRisk, account_id)
    db_session.delete(risk)  # the owner never saved any: the defaults' maximum of 10 %
    db_session.commit()  # its key's settings part is now empty: that alone moves it
    after = view_of(db_session, account_id)
    assert [(reference > 0, warn, most) for reference, warn, most, _, _ in after.limits] == [
        (True, D(8), D(10))
    ]
    assert len(parsed) == 2 and parsed[1] is None


def test_an_account_whose_sync_is_gone_when_its_view_is_built_is_not_watched(synced, db_session):
    account_id = synced()
    key = "|".join(["2026-01-01 00:00:00", "", ""])
    watch._rebuild(db_session, {account_id: (key, "sim://x", "Demo"), 10**9: (key, "sim://x", "Demo")})
    assert set(watch._cache) == {account_id}
