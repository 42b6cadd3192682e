"""Fixtures shared by the execution and reconciliation tests: a simulated broker per test, and
`run`/`approved` to make an approved signal and execute it against that broker."""

from __future__ import annotations

import functools
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.core.db import db
from shared.core.locks import each
from shared.execution import service as execution
from shared.mt5.gateway import Gateway
from shared.mt5.sim.broker import SimBroker
from shared.mt5.sim.terminal import SimTerminal
from shared.notifications import delivery
from shared.reconciliation.breaker import BreakerSettings
from shared.reconciliation.rules import Tolerances
from shared.reconciliation.sync import sync_account, sync_accounts

BUY = {"instrument": "EURUSD", "side": "buy", "volume": "0.10", "ttl_seconds": 600}


@pytest.fixture(scope="module")
def engine():
    engine = sa.create_engine(os.environ["DATABASE_URL"])
    yield engine
    engine.dispose()


@pytest.fixture
def broker():
    return SimBroker(seed=7)


def _control(broker):
    control = SimTerminal(broker)
    assert control.initialize(login=1001, password="x", server="TradeGuard-Sim")
    return control


@pytest.fixture
def terminal(broker):
    """A control handle on the simulated terminal the trades go to."""
    return _control(broker)


class Market:
    """The simulated trade server that `run` and `sync` reach: the test's `broker`, until `restart` puts
    another in its place (a terminal process restarted, say without its state)."""

    def __init__(self, broker):
        self.broker = broker

    def restart(self, broker):
        """From now on `run` and `sync` reach `broker`; returns a control handle on it (login 1001)."""
        self.broker = broker
        return _control(broker)


@pytest.fixture
def market(broker):
    return Market(broker)


@pytest.fixture
def run(db_session, engine, market, tmp_path):
    """`run(signal_id, **execution settings)` executes the signal against the test's broker, through a
    SimTerminal, or through a terminal of `terminal_type=` (a SimTerminal that misbehaves, say); `sleep=`
    stands in for its waits (none by default), `queue=` receives its webhook tasks (none by default)."""
    opened: list[int] = []

    @contextmanager
    def open_terminal(account, terminal_type=SimTerminal):
        opened.append(account.id)
        with Gateway.from_module(
            terminal_type(market.broker), login=account.login, password="x", server=account.server, timeout=5
        ) as gateway:
            yield gateway

    def run(signal_id, *, terminal_type=SimTerminal, sleep=lambda _: None, queue=None, **settings):
        # No lease by default: these tests decide when an earlier attempt is over.
        options = {
            "unknown_outcome_grace_seconds": 0.0,
            "terminal_timeout_seconds": 0.0,
            "lock_dir": tmp_path,
            **settings,
        }
        return execution.execute_signal(
            db_session,
            signal_id,
            engine=engine,
            open_terminal=functools.partial(open_terminal, terminal_type=terminal_type),
            settings=execution.ExecutionSettings(**options),
            sleep=sleep,
            queue=queue,
        )

    run.opened = opened
    return run


@pytest.fixture
def approved(api):
    """An approved signal on account login 1001; returns its id."""

    def make(payload=None):
        world = api.setup()
        signal = api.send_signal(world["client"], {**BUY, **(payload or {})}).json
        api.decide(world["user"], signal["id"])
        return signal["id"]

    return make


@pytest.fixture
def sync(db_session, market):
    """Reconcile one account (`sync(id)`, `queue=` to send webhook events) or a batch (`sync.many(ids)`)
    against the test's broker.
    `sync.unreachable` holds account ids whose terminal refuses connections; `sync.reads` records the
    (account id, deals_from, deals_to) of every `read_account`; `sync.terminal_type` is the terminal
    class it opens (a SimTerminal that misbehaves, say)."""
    unreachable: set[int] = set()
    reads: list[tuple[int, object, object]] = []

    @contextmanager
    def open_terminal(account):
        if account.id in unreachable:
            from shared.mt5.errors import TerminalUnavailable

            raise TerminalUnavailable("connection refused", call="initialize")
        with Gateway.from_module(
            sync.terminal_type(market.broker),
            login=account.login,
            password="x",
            server=account.server,
            timeout=5,
        ) as gateway:
            read_account = gateway.read_account

            def recorded_read(deals_from, deals_to):
                reads.append((account.id, deals_from, deals_to))
                return read_account(deals_from, deals_to)

            gateway.read_account = recorded_read
            yield gateway

    @contextmanager
    def no_lock(name):
        yield

    def symbol_specs(account, terminal, names):
        return {name: terminal.symbol(name) for name in names}

    def sync(account_id, lock=no_lock, queue=None):
        return sync_account(
            lambda: db.session(),
            account_id,
            open_terminal=open_terminal,
            lock=lock,
            symbol_specs=symbol_specs,
            tolerances=Tolerances(),
            breaker=BreakerSettings(failures_to_open=3, first_backoff_seconds=30),
            queue=queue,
        )

    def many(account_ids, lock=no_lock, **options):
        return sync_accounts(
            lambda: db.session(),
            account_ids,
            open_terminal=open_terminal,
            locks=options.pop("locks", None) or each(lock),
            symbol_specs=options.pop("symbol_specs", symbol_specs),
            tolerances=Tolerances(),
            breaker=BreakerSettings(failures_to_open=3, first_backoff_seconds=30),
            **options,
        )

    sync.unreachable = unreachable
    sync.terminal_type = SimTerminal
    sync.reads = reads
    sync.many = many
    return sync


# --- the embedded setup (SQLite and the filesystem broker), for Procfile processes ------------------


@pytest.fixture(scope="session")
def _embedded_database_template(tmp_path_factory):
    """An embedded SQLite database migrated by the Procfile's release line, once per run, to copy."""
    import subprocess

    from tests.processes import ROOT, embedded_env, procfile_command

    instance = tmp_path_factory.mktemp("embedded-template")
    subprocess.run(
        ["/bin/sh", "-c", procfile_command("release")],
        cwd=ROOT,
        env=embedded_env(instance),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return instance


@pytest.fixture
def embedded_instance(_embedded_database_template, tmp_path):
    """An instance folder of the embedded setup of its own: the database migrated, the broker empty."""
    import shutil

    for database_file in _embedded_database_template.glob("tradeguard.db*"):  # with SQLite's WAL, if any
        shutil.copy(database_file, tmp_path / database_file.name)
    return tmp_path


# --- a real browser -------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
# Pages are opened under a name of their own, which the browser resolves to 127.0.0.1.
SITE = "tradeguard.test"


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by Playwright (no browser is downloaded here)."""
    if not CHROMIUM.exists():
        # A missing browser fails the run, as a missing Postgres or Redis does: never a silent skip.
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=[f"--host-resolver-rules=MAP {SITE} 127.0.0.1"]
        )
        yield browser
        browser.close()


# --- names that resolve ------------------------------------------------------------------------------

# A public address for webhook receivers (example.com's); nothing is ever sent to it.
PUBLIC = "93.184.216.34"


@pytest.fixture
def dns(monkeypatch):
    """This machine resolves no public names: a small DNS of the tests' own (webhook URLs). A name it
    does not hold does not resolve; an IP address resolves to itself."""
    names = {"hooks.example.com": [PUBLIC], "internal.example.com": ["10.1.2.3"]}

    def resolve(host, port):
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            return [host]
        except OSError:
            pass
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return names[host]

    monkeypatch.setattr(delivery, "resolve", resolve)
    return names
