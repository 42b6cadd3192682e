"""The simulated trade server across restarts: tickets never repeat, and its state file (instance/ in the
embedded setup) brings back its accounts, positions, history and prices."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shared.mt5 import constants as C
from shared.mt5.sim.broker import SimBroker
from shared.mt5.sim.state import (
    STATE_FILE_ENV,
    StateKeeper,
    default_state_file,
    load_state,
    save_state,
)
from shared.mt5.sim.terminal import SimTerminal

LOGIN = 1001


def terminal(broker: SimBroker) -> SimTerminal:
    mt5 = SimTerminal(broker)
    assert mt5.initialize(login=LOGIN, password="x", server="TradeGuard-Sim")
    return mt5


def test_a_restarted_broker_never_reuses_a_ticket():
    """A restart without its state (a fresh process) starts its tickets beyond every ticket the one
    before it gave, even one started within the same second."""
    first = SimBroker(seed=7)
    before = terminal(first)
    tickets = [before.sim_open_manual(LOGIN, "EURUSD", C.ORDER_TYPE_BUY, 0.1) for _ in range(50)]
    deals = [d.ticket for d in before.history_deals_get(0, 2**40)]

    again = terminal(SimBroker(seed=7))
    reopened = again.sim_open_manual(LOGIN, "EURUSD", C.ORDER_TYPE_BUY, 0.1)
    assert reopened > max(tickets + deals)
    assert min(d.ticket for d in again.history_deals_get(0, 2**40)) > max(tickets + deals)


def test_tickets_follow_the_clock_given_and_an_explicit_first_ticket():
    # Deterministic under an injected clock (the same clock readings give the same tickets) ...
    assert SimBroker(seed=1, clock=lambda: 1_700_000_000.0).first_ticket == 1_700_000_000_000_000
    assert SimBroker(seed=1, clock=lambda: 0.0).first_ticket > 0
    # ... and a test may ask for a ticket range (to play a server that reuses tickets).
    assert (
        terminal(SimBroker(seed=1, first_ticket=5_000)).sim_open_manual(
            LOGIN, "EURUSD", C.ORDER_TYPE_BUY, 0.1
        )
        == 5_001
    )  # 5_000 is the demo account's deposit deal


def test_the_state_file_brings_back_accounts_positions_history_and_prices(tmp_path):
    path = tmp_path / "sim-state.json"
    broker = SimBroker(seed=7)
    mt5 = terminal(broker)
    mt5.sim_set_quote("EURUSD", 1.10000, 1.10010)
    kept = mt5.sim_open_manual(LOGIN, "EURUSD", C.ORDER_TYPE_BUY, 0.3)
    closed = mt5.sim_open_manual(LOGIN, "EURUSD", C.ORDER_TYPE_SELL, 0.1)
    assert (
        mt5.order_send(
            {
                "action": C.TRADE_ACTION_SLTP,
                "position": kept,
                "symbol": "EURUSD",
                "sl": 1.09000,
                "tp": 1.11000,
            }
        ).retcode
        == C.TRADE_RETCODE_DONE
    )
    mt5.sim_set_quote("EURUSD", 1.10100, 1.10110)
    mt5.sim_close_manual(LOGIN, closed)
    save_state(broker, path)

    restored = SimBroker(seed=7)
    load_state(restored, path)
    after = terminal(restored)
    (position,) = after.positions_get()
    assert (position.ticket, position.volume, position.sl, position.tp) == (kept, 0.3, 1.09, 1.11)
    assert position.time_msc == mt5.positions_get()[0].time_msc
    assert after.history_deals_get(0, 2**40) == mt5.history_deals_get(0, 2**40)
    assert after.history_orders_get(0, 2**40) == mt5.history_orders_get(0, 2**40)
    assert after.account_info().balance == mt5.account_info().balance
    assert after.symbol_info_tick("EURUSD").bid == 1.10100  # pinned prices stay pinned
    # A closed position stays closed, and the tickets go on after the last one given.
    assert after.sim_open_manual(LOGIN, "EURUSD", C.ORDER_TYPE_BUY, 0.1) > max(
        d.ticket for d in mt5.history_deals_get(0, 2**40)
    )
    # Broker-side stops still fire after the restart.
    after.sim_set_quote("EURUSD", 1.08990, 1.09000)
    assert [p.ticket for p in after.positions_get()] != [kept]
    stop = [d for d in after.history_deals_get(0, 2**40) if d.position_id == kept][-1]
    assert stop.reason == C.DEAL_REASON_SL


def test_an_unreadable_state_file_is_set_aside_and_the_broker_starts_afresh(tmp_path):
    path = tmp_path / "sim-state.json"
    path.write_text("{not json")
    broker = SimBroker(seed=7)
    assert load_state(broker, path) is False
    assert not path.exists() and len(list(tmp_path.glob("sim-state.json.unreadable-*"))) == 1
    assert terminal(broker).positions_get() == ()
    assert load_state(SimBroker(seed=7), tmp_path / "missing.json") is False


def test_the_keeper_saves_what_changed_and_once_more_when_closed(tmp_path):
    path = tmp_path / "sim-state.json"
    broker = SimBroker(seed=7)
    keeper = StateKeeper(broker, path, interval_seconds=0.05)
    keeper.start()
    try:
        ticket = terminal(broker).sim_open_manual(LOGIN, "GBPUSD", C.ORDER_TYPE_BUY, 0.2)
        deadline = time.monotonic() + 5
        while not (path.exists() and str(ticket) in path.read_text()):
            assert time.monotonic() < deadline, "the keeper never saved the new position"
            time.sleep(0.02)
        saved_at = path.stat().st_mtime_ns
        time.sleep(0.2)
        assert path.stat().st_mtime_ns == saved_at  # nothing changed: nothing written
    finally:
        keeper.close()
    state = json.loads(path.read_text())
    assert [p["ticket"] for p in state["positions"]] == [ticket]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "instance/sim-state.json"),  # the embedded setup: on
        ({"DATABASE_URL": "sqlite:////tmp/x.db"}, "instance/sim-state.json"),
        ({"DATABASE_URL": "postgresql://db/tradeguard"}, None),  # a server database: off unless asked
        ({"DATABASE_URL": "postgresql://db/x", STATE_FILE_ENV: "/srv/sim.json"}, "/srv/sim.json"),
        ({STATE_FILE_ENV: "off"}, None),  # turned off
        ({STATE_FILE_ENV: ""}, "instance/sim-state.json"),  # empty is unset, as for every setting
        ({"TRADEGUARD_INSTANCE_DIR": "/var/lib/tg"}, "/var/lib/tg/sim-state.json"),
    ],
)
def test_the_state_file_is_kept_by_default_in_the_embedded_setup_only(env, expected):
    found = default_state_file(env)
    if expected is None:
        assert found is None
    elif expected.startswith("/"):
        assert found == Path(expected)
    else:
        assert found is not None and found.parts[-2:] == tuple(expected.split("/"))
