"""Orders go out on the worker process's pooled terminal connections (`workers.runtime.open_terminal`),
as reconciliation's reads do: one connection per process serves order after order, logged in again
only for another account, and a connection whose order reply was lost is never used again. And a real
worker logs where each order's time went (shared.execution.timing)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
import rpyc

from shared.core import extensions
from shared.models import TradeState
from shared.mt5.errors import OrderOutcomeUnknown
from tests.conftest import Api
from tests.integration.test_execution_worker import make_approved_signal, terminal_orders, trade_of
from tests.processes import celery_worker, terminal_server, wait_for


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with terminal_server() as listening:
        yield listening


@pytest.fixture
def runtime(sent_tasks):
    """workers.runtime with an empty terminal pool, emptied again afterwards; what the code under test
    enqueues is kept from the broker."""
    import workers.runtime

    workers.runtime.terminal_pool().clear()
    yield workers.runtime
    workers.runtime.terminal_pool().clear()


@pytest.fixture
def connections(runtime, monkeypatch) -> list[str]:
    """What the pool was asked for by the code under test: "new" for each connection made, "reused"
    for each idle one handed out."""
    pool = runtime.terminal_pool()
    asked: list[str] = []
    take = pool.take

    def recording_take(key):
        backend = take(key)
        asked.append("new" if backend is None else "reused")
        return backend

    monkeypatch.setattr(pool, "take", recording_take)
    return asked


def test_orders_for_two_accounts_go_out_on_one_pooled_connection(
    app, committed_db, port, runtime, connections
):
    import workers.tasks

    api = Api(app.test_client())
    first, _ = make_approved_signal(api, f"sim://127.0.0.1:{port}", 7101)
    second, _ = make_approved_signal(api, f"sim://127.0.0.1:{port}", 7102)

    assert workers.tasks.execute_signal.apply(args=[first]).get() == "filled"
    assert workers.tasks.execute_signal.apply(args=[second]).get() == "filled"

    assert connections == ["new", "reused"]
    assert runtime.terminal_pool().idle() == 1  # given back after each order
    for signal_id, login in ((first, 7101), (second, 7102)):
        trade = trade_of(committed_db, signal_id)
        assert trade.state == TradeState.FILLED and trade.attempts == 1
        # On the account's own login: the second order logged the pooled session in to its account.
        assert terminal_orders(port, login, trade.comment) == 1


@dataclass(frozen=True)
class Account:
    """What opening a terminal reads of an account (shared.mt5.ports.TerminalAccount)."""

    id: int
    terminal_url: str
    login: int
    server: str
    credentials_encrypted: bytes


def test_a_connection_whose_order_reply_was_lost_is_not_given_back(port, runtime, connections):
    box = extensions.secret_box(runtime.flask_app())
    account = Account(7201, f"sim://127.0.0.1:{port}", 7201, "TradeGuard-Sim", box.encrypt("demo"))
    with runtime.open_terminal(account) as terminal:
        quote = terminal.quote("EURUSD")
    assert runtime.terminal_pool().idle() == 1

    control = rpyc.classic.connect("127.0.0.1", port)
    try:
        control.execute("import MetaTrader5 as mt5")
        control.eval("mt5.sim_lose_next_reply")()
    finally:
        control.close()
    request = terminal.market_order_request(
        symbol="EURUSD",
        side="buy",
        volume=Decimal("0.01"),
        price=quote.ask,
        sl=None,
        tp=None,
        deviation_points=50,
        magic=4242,
        comment="TG-pool-lost",
    )
    with runtime.open_terminal(account) as terminal, pytest.raises(OrderOutcomeUnknown):
        terminal.send_order(request)

    # The session behind that connection is in a state nobody knows: it is dropped, not pooled.
    assert runtime.terminal_pool().idle() == 0
    with runtime.open_terminal(account) as terminal:
        found = [p for p in terminal.positions("EURUSD") if p.comment == "TG-pool-lost"]
    assert len(found) == 1  # the order was made once; the next connection sees it
    assert connections == ["new", "reused", "new"]


def test_a_real_worker_logs_where_the_orders_time_went(app, committed_db, port):
    """The approval's message carries when it was sent; the worker logs the order's steps after it."""
    api = Api(app.test_client())
    with celery_worker() as worker:
        signal_id, _ = make_approved_signal(api, f"sim://127.0.0.1:{port}", 7301)
        assert wait_for(lambda: f"order timing signal={signal_id} " in worker.log()), worker.log()
    line = next(ln for ln in worker.log().splitlines() if f"order timing signal={signal_id} " in ln)
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    assert float(fields["published"]) > 0
    steps = [
        float(fields[name]) for name in ("started", "opening", "opened", "checked", "sending", "answered")
    ]
    assert steps == sorted(steps) and steps[0] >= 0, line
    assert trade_of(committed_db, signal_id).state == TradeState.FILLED
