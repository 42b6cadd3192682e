"""Guards benchmark: how soon a breach reaches the owner, and whether the close keeps its promise, on the
whole stack as the Procfile runs it; and what the guards cost reconciliation.

    PYTHONPATH=. .venv/bin/python bench/guards.py [--accounts 1000] [--owners 10] [--positions 3]
        [--breaching 100] [--grace 10] [--rounds 1] [--redis-db 7] [--fanout-rounds 1]
        [--fanout-reference 263fb59] [--no-fanout] [--profile worker,beat] [--json FILE]

A guards round builds a system of its own and takes it down again (as bench/approval.py does):

- a throw-away Postgres database built by the Procfile's `release` line, dropped at the end; the Redis
  database `--redis-db` (default 7), flushed before and after;
- the Procfile's `terminal`, `web`, `worker` (orders and guards, `-Q celery`), `reconciler` and `beat`,
  each with its Procfile command line and defaults, plus `TRADEGUARD_WEBHOOK_ALLOW_PRIVATE=true` so that
  webhooks may reach the receiver this process runs on 127.0.0.1;
- every symbol pinned (`sim_set_quote`), so nothing moves unless the benchmark moves it;
- `--owners` owners registered over the API, each with one webhook (all events) pointing at that
  receiver, which records when each delivery arrived and answers 200; signatures are checked;
- `--accounts` accounts spread over the owners (rows seeded directly, as bench/fanout.py does), each
  with `--positions` positions opened on the terminal (`sim_open_manual`, one remote call). The
  `--breaching` ones hold GBPUSD buys of `--lots` lots each, the others 0.01-lot positions in the other
  symbols. Every account's risk settings: one `close` limit (lifetime, peak equity, max 2 %),
  confirmations 2, grace `--grace` s; the market guard off.

Once every account has had its first sync and a guard reading (a reference for its limit), and after
`--settle` seconds more, the benchmark moves GBPUSD down `--move-pips` pips in one `sim_set_quote` at T0,
while reconciliation goes on every 10 s as usual. It then waits for every alert to finish and prints:

- T0 -> `alert.pending` webhook received, per breaching account: p50 / p99 / max (goal p99 <= 1 s);
- per closed position, its closing deal's time on the terminal (`time_msc`; the server's offset is
  checked to be 0) minus (`alert.pending` received + grace): p50 / p99 / max and the share within
  +-0.5 s (the goal); also minus the alert's `close_at`, which separates the webhook's lateness from the
  close's;
- closing deals per position (OUT deals by position id on the terminal; goal exactly 1), that no other
  account got an alert, the alerts' statuses and `positions_closed_count`, the audit rows;
- CPU seconds of each process over the breach, and the load average.

Then, unless `--no-fanout`: accounts reconciled per 10-s cycle with the guards' reading after every
sync (`reconcile_accounts` calls `guard_readings.record_synced`), against the tree before the guards
(`--fanout-reference`, extracted with `git archive`), and this tree again with the guards worker and
its watch running alongside (`bench/fanout.py --with-guards`): bench/fanout.py with `make
bench-fanout`'s settings (5,000 accounts x 20 positions, 100 ms terminal latency, -c 6, --warm), the
three runs alternating, `--fanout-rounds` each. Goal: still >= 5,000 accounts per cycle while the
guards run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.approval import (  # noqa: E402
    Api,
    Group,
    extract,
    listening,
    pct,
    py_spy,
    stack,
    wait_until,
)
from bench.fanout import summarise_profile  # noqa: E402
from bench.procfs import by_name, cpu_seconds, descendants  # noqa: E402
from shared.core.signing import signature_matches  # noqa: E402

# The Procfile's long-running lines (flower aside); a tree whose Procfile has a line of its own for the
# guards' tasks (`guards`) gets it started too.
PROCESSES = ("terminal", "web", "worker", "reconciler", "beat", "guards")
FIRST_LOGIN = 8_000_001
LIMIT = "max drawdown"
# Where every symbol is pinned: the sim's own starting prices and spreads.
PINS = {
    "EURUSD": (1.08500, 1.08510),
    "GBPUSD": (1.27000, 1.27014),
    "USDJPY": (150.000, 150.012),
    "XAUUSD": (2350.00, 2350.30),
}
BREACH_SYMBOL = "GBPUSD"
QUIET_SYMBOLS = ("EURUSD", "USDJPY", "XAUUSD")


# --- the webhook receiver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    received: float  # time.time() when the request arrived
    delivery_id: str
    event: str
    account_id: int | None
    alert_id: int | None
    data: dict[str, Any]
    headers: dict[str, str]
    body: bytes


class _Listener(ThreadingHTTPServer):
    # http.server listens with a backlog of 5. The workers' 16 delivery threads connect at once, the
    # kernel drops the SYNs past the backlog (TcpExtListenOverflows) and each dropped one is sent again
    # 1 s later: the receiver, not TradeGuard, then added a second to a delivery (seen here before this
    # was set). A web server's backlog is in the hundreds (nginx 511, gunicorn 2048).
    request_queue_size = 512


class Receiver:
    """Records every POST and answers 200 at once."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                received = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {}
                data = payload.get("data") or {}
                with receiver.lock:
                    receiver.deliveries.append(
                        Delivery(
                            received,
                            str(payload.get("id")),
                            str(payload.get("event")),
                            payload.get("account_id"),
                            data.get("alert_id"),
                            data,
                            dict(self.headers.items()),
                            body,
                        )
                    )

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = _Listener(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def of(self, event: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.event == event]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the terminal --------------------------------------------------------------------------------------


def terminal_call(port: int, source: str, function: str, *args: Any, timeout: float = 600) -> Any:
    """Define `function` in the terminal's Python and call it; it returns JSON text, read here (no
    netrefs to walk, one round trip)."""
    import rpyc

    conn = rpyc.classic.connect("127.0.0.1", port)
    try:
        conn._config["sync_request_timeout"] = timeout
        conn.execute("import MetaTrader5 as mt5\nimport json")
        conn.execute(source)
        return json.loads(str(conn.namespace[function](*args)))
    finally:
        conn.close()


SEED = """
def _bench_seed(pins, breaching, quiet, positions, lots, breach_symbol, quiet_symbols):
    for symbol, (bid, ask) in pins.items():
        mt5.sim_set_quote(symbol, bid, ask)
    broker = mt5.sim_broker
    # Each open runs the broker's sweep over every position; nothing can trigger during the seeding
    # (pinned prices, no SL/TP), so it is switched off meanwhile, as bench/fanout.py does.
    broker._refresh = lambda: None
    try:
        out = {}
        for login in breaching:
            out[login] = [mt5.sim_open_manual(login, breach_symbol, mt5.ORDER_TYPE_BUY, lots)
                          for _ in range(positions)]
        for login in quiet:
            out[login] = [mt5.sim_open_manual(login, quiet_symbols[(login + i) % len(quiet_symbols)],
                                              (login + i) % 2, 0.01)
                          for i in range(positions)]
        return json.dumps(out)
    finally:
        del broker._refresh
"""

MOVE = """
def _bench_move(symbol, bid, ask):
    import time as _t
    mt5.sim_set_quote(symbol, bid, ask)
    return json.dumps(_t.time())
"""

DEALS = """
def _bench_deals(logins, symbol):
    from datetime import datetime, timezone
    out = {}
    for login in logins:
        mt5.initialize(login=login, password='demo', server='TradeGuard-Sim')
        deals = mt5.history_deals_get(datetime(2000, 1, 1, tzinfo=timezone.utc),
                                      datetime(2100, 1, 1, tzinfo=timezone.utc)) or ()
        out[login] = {
            'deals': [[d.position_id, d.entry, d.time_msc, d.comment, d.magic] for d in deals],
            'open': [p.ticket for p in (mt5.positions_get() or ())],
        }
    tick = mt5.symbol_info_tick(symbol)
    import time as _t
    return json.dumps({'accounts': out, 'tick_time': tick.time, 'now': _t.time()})
"""


# --- one round -------------------------------------------------------------------------------------------


@dataclass
class Round:
    pending_s: list[float] = field(default_factory=list)  # T0 -> alert.pending received, per account
    close_vs_receipt_s: list[float] = field(default_factory=list)  # deal - (receipt + grace), per position
    close_vs_close_at_s: list[float] = field(default_factory=list)  # deal - alert.close_at
    pending_vs_alert_s: list[float] = field(default_factory=list)  # receipt - alert.created_at
    created_s: list[float] = field(default_factory=list)  # T0 -> alert.created_at, per account
    closes_per_position: dict[int, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def risk_document(grace: int, max_percent: float) -> dict[str, Any]:
    from shared.guards.settings import default_settings, validate_settings

    document = default_settings()
    document.update(
        {
            "grace_seconds": grace,
            "confirmations": 2,
            "drawdown_limits": [
                {
                    "name": LIMIT,
                    "period": "lifetime",
                    "reference": "peak_equity",
                    "warn_percent": None,
                    "max_percent": max_percent,
                    "max_amount": None,
                    "action": "close",
                    "resume": "manual",
                }
            ],
            # Pinned quotes grow old: the market guard would only add noise here.
            "market": {
                "max_spread_pips": None,
                "max_gap_pips": None,
                "stale_quote_seconds": None,
                "action": "warn",
            },
        }
    )
    return validate_settings(document)


def seed_accounts(
    database_url: str,
    encryption_key: str,
    owner_ids: list[int],
    logins: list[int],
    terminal_url: str,
    document: dict[str, Any],
) -> dict[int, int]:
    """Accounts (owner k holds a contiguous share) and their risk settings; returns login -> account id."""
    from datetime import UTC, datetime

    from shared.core.crypto import SecretBox
    from shared.models import Account, AccountRisk

    box = SecretBox([encryption_key])
    now = datetime.now(UTC)
    per_owner = -(-len(logins) // len(owner_ids))
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            ids = (
                conn.execute(
                    sa.insert(Account.__table__).returning(Account.__table__.c.id),
                    [
                        {
                            "owner_id": owner_ids[i // per_owner],
                            "name": f"guards {login}",
                            "terminal_url": terminal_url,
                            "login": login,
                            "server": "TradeGuard-Sim",
                            "credentials_encrypted": box.encrypt("demo"),
                            "currency": "USD",
                            "created_at": now,
                        }
                        for i, login in enumerate(logins)
                    ],
                )
                .scalars()
                .all()
            )
            conn.execute(
                sa.insert(AccountRisk.__table__),
                [{"account_id": a, "settings": document, "updated_at": now} for a in ids],
            )
    finally:
        engine.dispose()
    return dict(zip(logins, ids, strict=True))


def all_running(group: Group) -> None:
    for name in PROCESSES:
        if name in group.procs:
            group.check(name)


def run_round(args: argparse.Namespace, label: str) -> Round:
    result = Round()
    receiver = Receiver()
    logins = [FIRST_LOGIN + i for i in range(args.accounts)]
    # Every (accounts / breaching)-th account breaches: each owner has its share of them.
    step = max(1, args.accounts // max(1, args.breaching))
    breaching = set(logins[::step][: args.breaching])
    # Webhooks may reach the receiver this process runs on 127.0.0.1.
    allow_private = {"TRADEGUARD_WEBHOOK_ALLOW_PRIVATE": "true"}
    with contextlib.closing(receiver), stack(ROOT, args, "guards", label, allow_private) as running:
        tree, log_dir, database_url = running.tree, running.log_dir, running.database_url
        encryption_key, web_port = running.encryption_key, running.web_port
        terminal_port, terminal_url = running.terminal_port, running.terminal_url
        env, commands, group, engine = running.env, running.commands, running.group, running.engine
        began = time.monotonic()
        tickets = {
            int(k): v
            for k, v in terminal_call(
                terminal_port,
                SEED,
                "_bench_seed",
                PINS,
                sorted(breaching),
                [lg for lg in logins if lg not in breaching],
                args.positions,
                args.lots,
                BREACH_SYMBOL,
                list(QUIET_SYMBOLS),
            ).items()
        }
        for name in PROCESSES[1:]:
            if name in commands:
                group.start(name, commands[name], env, tree)
        wait_until("web", lambda: listening(web_port), 60, lambda: group.check("web"))

        # The owners and their webhooks, over the API.
        api = Api(web_port)
        owner_ids, secrets = [], {}
        for k in range(args.owners):
            email, password = f"owner{k}@example.com", "guards benchmark"
            user = api.ok("POST", "/auth/register", {"email": email, "password": password})
            api.token = api.ok("POST", "/auth/login", {"email": email, "password": password})["access_token"]
            hook = api.ok("POST", "/webhooks", {"url": receiver.url})
            owner_ids.append(int(user["id"]))
            secrets[int(user["id"])] = str(hook["secret"])
            api.token = None
        api.close()
        account_of = seed_accounts(
            database_url,
            encryption_key,
            owner_ids,
            logins,
            terminal_url,
            risk_document(args.grace, args.max_percent),
        )
        login_of = {a: lg for lg, a in account_of.items()}
        breaching_ids = {account_of[lg] for lg in breaching}
        owner_of_account = {}
        with engine.connect() as conn:
            for a, o in conn.execute(sa.text("SELECT id, owner_id FROM accounts")):
                owner_of_account[int(a)] = int(o)
        print(
            f"  seeded {args.accounts} accounts x {args.positions} positions ({len(breaching)} breaching, "
            f"{args.lots} lots {BREACH_SYMBOL} each) for {args.owners} owners in "
            f"{time.monotonic() - began:.1f} s; logs in {log_dir}",
            flush=True,
        )

        def ready() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.text(
                            "SELECT count(*) FROM account_sync s JOIN guard_states g USING (account_id) "
                            "WHERE s.last_synced_at IS NOT NULL AND s.equity IS NOT NULL "
                            "AND g.limits -> :limit ->> 'reference' IS NOT NULL"
                        ),
                        {"limit": LIMIT},
                    ).scalar_one()
                )

        wait_until(
            "every account's first sync and guard reading",
            lambda: ready() >= args.accounts,
            180,
            lambda: all_running(group),
        )
        print(f"  every account synced and read by its guards after {time.monotonic() - began:.1f} s")
        time.sleep(args.settle)
        early = [d for d in receiver.deliveries if d.event.startswith(("alert.", "guard."))]
        if early:
            result.problems.append(f"{len(early)} guard webhook(s) before the breach: {early[0].event}")

        running = [name for name in PROCESSES if name in group.procs]
        pids = {name: descendants(group.pid(name)) for name in running}
        pids["postgres"] = by_name("postgres")
        pids["redis"] = by_name("redis-server")
        cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
        result.load = os.getloadavg()
        profilers = []
        if args.profile:
            for name in args.profile.split(","):
                out = log_dir / f"{name}.prof"
                profilers.append((name, out, py_spy(group.pid(name), out)))
            time.sleep(1.0)

        bid, ask = PINS[BREACH_SYMBOL]
        move = args.move_pips * 0.0001
        t0 = float(terminal_call(terminal_port, MOVE, "_bench_move", BREACH_SYMBOL, bid - move, ask - move))
        sent_at = time.time()
        result.facts["set_quote_call_s"] = round(sent_at - t0, 4)

        def pending_count() -> int:
            return len({d.account_id for d in receiver.of("alert.pending")})

        with contextlib.suppress(TimeoutError):
            wait_until("every alert.pending", lambda: pending_count() >= len(breaching), 60)
        result.facts["pending_all_by_s"] = round(time.time() - t0, 2)

        def alerts_done() -> bool:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.text("SELECT count(*) FROM drawdown_alerts WHERE status IN ('pending', 'closing')")
                    ).scalar_one()
                ) == 0 and len(receiver.of("alert.executed")) + len(receiver.of("alert.failed")) >= len(
                    receiver.of("alert.pending")
                )

        with contextlib.suppress(TimeoutError):
            wait_until("every alert finished", alerts_done, args.grace + 120)
        result.facts["done_by_s"] = round(time.time() - t0, 2)
        time.sleep(args.after)  # anything late (a second close, a stray alert) shows up meanwhile
        result.seconds = time.time() - t0
        for name, out, profiler in profilers:
            profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=60)
            if out.exists():  # a frame's text may hold spaces: keep the lines that end in a count
                lines = out.read_text(errors="replace").splitlines()
                out.write_text("\n".join(ln for ln in lines if ln.rpartition(" ")[2].isdigit()) + "\n")
            print(f"  py-spy {name} (--gil):")
            print("\n".join(summarise_profile(out, top=25)))
        pids = {
            name: sorted(set(p) | set(descendants(group.pid(name)) if name in running else []))
            for name, p in pids.items()
        }
        cpu_after = {name: cpu_seconds(p) for name, p in pids.items()}
        result.cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_before}

        # --- what happened --------------------------------------------------------------------------
        terminal = terminal_call(terminal_port, DEALS, "_bench_deals", sorted(breaching), BREACH_SYMBOL)
        # The server's clock offset as the gateway learns it: the last tick's time (server clock) minus
        # UTC, to the quarter hour (that tick is T0's, some seconds old). Deals are stamped in that time.
        offset = round((int(terminal["tick_time"]) - float(terminal["now"])) / 900) * 900
        result.facts["server_offset_s"] = offset
        with engine.connect() as conn:
            alerts = conn.execute(
                sa.text(
                    "SELECT id, account_id, status, positions_closed_count, "
                    "extract(epoch FROM created_at) AS created, extract(epoch FROM close_at) AS close_at "
                    "FROM drawdown_alerts"
                )
            ).all()
            closes = conn.execute(
                sa.text("SELECT alert_id, position_ticket, state, attempts FROM alert_closes")
            ).all()
            audit: dict[str, int] = dict(
                conn.execute(
                    sa.text(
                        "SELECT action, count(*) FROM audit_log WHERE action LIKE 'alert.%' "
                        "OR action LIKE 'position.%' OR action LIKE 'account.%' OR action LIKE 'guard.%' "
                        "GROUP BY 1 ORDER BY 1"
                    )
                ).all()
            )
            deliveries: dict[str, int] = dict(
                conn.execute(
                    sa.text("SELECT status::text, count(*) FROM webhook_deliveries GROUP BY 1")
                ).all()
            )
        result.facts["audit"] = audit
        result.facts["deliveries"] = deliveries
        result.facts["alerts"] = dict(
            sorted({s: sum(1 for a in alerts if a.status == s) for s in {a.status for a in alerts}}.items())
        )
        result.facts["positions_closed_count"] = sum(a.positions_closed_count for a in alerts)
        strays = [a for a in alerts if a.account_id not in breaching_ids]
        if strays:
            result.problems.append(f"{len(strays)} alert(s) on accounts that did not breach")
        missing = breaching_ids - {a.account_id for a in alerts}
        if missing:
            result.problems.append(f"{len(missing)} breaching account(s) without an alert")
        if len(alerts) != len({a.account_id for a in alerts}):
            result.problems.append("an account got more than one alert")
        result.facts["webhooks_by_event"] = dict(
            sorted(
                {
                    e: sum(1 for d in receiver.deliveries if d.event == e)
                    for e in {d.event for d in receiver.deliveries}
                }.items()
            )
        )
        other_events = [
            d for d in receiver.deliveries if d.account_id is not None and d.account_id not in breaching_ids
        ]
        if other_events:
            result.problems.append(f"{len(other_events)} webhook(s) about accounts that did not breach")

        # Signatures: every delivery, with its owner's secret.
        bad = 0
        for d in receiver.deliveries:
            owner = owner_of_account.get(d.account_id or -1)
            secret = secrets.get(owner) if owner is not None else None
            if secret is None or not signature_matches(
                secret, d.headers.get("X-Timestamp", ""), d.body, d.headers.get("X-Signature", "")
            ):
                bad += 1
        result.facts["signatures_checked"] = len(receiver.deliveries)
        if bad:
            result.problems.append(f"{bad} delivery signature(s) did not match")

        pending_at: dict[int, float] = {}
        for d in sorted(receiver.of("alert.pending"), key=lambda d: d.received):
            if d.account_id is not None:
                pending_at.setdefault(int(d.account_id), d.received)
        duplicates = len(receiver.of("alert.pending")) - len(pending_at)
        if duplicates:
            result.facts["pending_duplicates"] = duplicates
        result.pending_s = [pending_at[a] - t0 for a in breaching_ids if a in pending_at]
        if len(result.pending_s) < len(breaching_ids):
            result.problems.append(
                f"{len(breaching_ids) - len(result.pending_s)} breaching account(s) got no alert.pending"
            )
        alert_of = {int(a.account_id): a for a in alerts}
        for a in breaching_ids:
            if a in pending_at and a in alert_of:
                result.pending_vs_alert_s.append(pending_at[a] - float(alert_of[a].created))
            if a in alert_of:
                result.created_s.append(float(alert_of[a].created) - t0)

        for account_id in sorted(breaching_ids):
            login = login_of[account_id]
            seen = terminal["accounts"][str(login)]
            outs: dict[int, list[int]] = {}
            for position_id, entry, time_msc, _comment, _magic in seen["deals"]:
                if entry != 0:  # DEAL_ENTRY_IN is 0: anything else closes (some of) the position
                    outs.setdefault(int(position_id), []).append(int(time_msc))
            for ticket in tickets[login]:
                result.closes_per_position[ticket] = len(outs.get(ticket, []))
                if ticket in outs and account_id in pending_at:
                    deal_at = min(outs[ticket]) / 1000 - offset
                    result.close_vs_receipt_s.append(deal_at - (pending_at[account_id] + args.grace))
                    if account_id in alert_of:
                        result.close_vs_close_at_s.append(deal_at - float(alert_of[account_id].close_at))
            if seen["open"]:
                result.problems.append(f"login {login}: {len(seen['open'])} position(s) still open")
        not_once = {t: n for t, n in result.closes_per_position.items() if n != 1}
        if not_once:
            result.problems.append(
                f"{len(not_once)} position(s) not closed exactly once: "
                + ", ".join(f"{t}: {n}" for t, n in list(not_once.items())[:5])
            )
        result.facts["close_rows"] = {
            s: sum(1 for c in closes if c.state == s) for s in sorted({c.state for c in closes})
        }
        result.facts["close_attempts_max"] = max((c.attempts for c in closes), default=0)
        for name in [n for n in PROCESSES[1:] if n in group.procs]:
            errors = [ln for ln in group.log(name).splitlines() if " ERROR" in ln or "Traceback" in ln]
            if errors:
                result.problems.append(f"{name} log: {len(errors)} error line(s), first: {errors[0][:200]}")
        # The watch runs where the guards' queue is served: their own process when the Procfile has one.
        watcher = "guards" if "guards" in group.procs else "worker"
        result.facts["watch_lines"] = sum(1 for ln in group.log(watcher).splitlines() if "guard watch:" in ln)
        # When the watch sent the crowd to be read, from T0 (its log line's local time; one line per tick
        # that sent some): how much of the way to the alerts was the watch's.
        result.facts["watch_sent_s"] = [
            round(logged_at(ln) - t0, 3)
            for ln in group.log(watcher).splitlines()
            if "guard watch: reading" in ln and logged_at(ln) > t0
        ]
    return result


def logged_at(line: str) -> float:
    """The epoch time of a log line stamped the logging module's way, in local time
    (`2026-12-01 05:52:26,260 INFO ...`); 0 when the line has no such stamp."""
    try:
        stamp, millis = line[:23].split(",")
        return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    except ValueError:
        return 0.0


def spread(values: list[float], unit: str = "s") -> str:
    if not values:
        return "(none)"
    return f"p50 {pct(values, 0.5):.3f}  p99 {pct(values, 0.99):.3f}  max {max(values):.3f} {unit}"


def report(rounds: list[Round], args: argparse.Namespace) -> dict[str, Any]:
    pending = [x for r in rounds for x in r.pending_s]
    vs_receipt = [x for r in rounds for x in r.close_vs_receipt_s]
    vs_close_at = [x for r in rounds for x in r.close_vs_close_at_s]
    lag = [x for r in rounds for x in r.pending_vs_alert_s]
    created = [x for r in rounds for x in r.created_s]
    closes = [n for r in rounds for n in r.closes_per_position.values()]
    within = sum(1 for x in vs_receipt if abs(x) <= 0.5)
    cpu = {name: sum(r.cpu.get(name, 0.0) for r in rounds) for name in rounds[0].cpu}
    seconds = sum(r.seconds for r in rounds)
    figures: dict[str, Any] = {
        "bench": "guards",
        "accounts": args.accounts,
        "breaching": args.breaching,
        "positions": args.positions,
        "grace_s": args.grace,
        "pending_p50_s": pct(pending, 0.5),
        "pending_p99_s": pct(pending, 0.99),
        "pending_max_s": max(pending, default=float("nan")),
        "close_vs_receipt_p50_s": pct(vs_receipt, 0.5),
        "close_vs_receipt_p99_s": pct(vs_receipt, 0.99),
        "close_vs_receipt_min_s": min(vs_receipt, default=float("nan")),
        "close_vs_receipt_max_s": max(vs_receipt, default=float("nan")),
        "close_within_half_second": f"{within}/{len(vs_receipt)}",
        "close_vs_close_at_p50_s": pct(vs_close_at, 0.5),
        "close_vs_close_at_max_s": max(vs_close_at, default=float("nan")),
        "created_p50_s": pct(created, 0.5),
        "created_p99_s": pct(created, 0.99),
        "closes_per_position": {str(n): closes.count(n) for n in sorted(set(closes))},
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "seconds": round(seconds, 1),
        "load_before": [r.load for r in rounds],
        "facts": [r.facts for r in rounds],
        "problems": [p for r in rounds for p in r.problems],
    }
    print()
    print(
        f"guards: {args.accounts} accounts x {args.positions} positions, {args.breaching} breaching "
        f"({args.move_pips:g} pips on {args.lots} lots x {args.positions}), grace {args.grace} s, "
        f"{len(rounds)} round(s); load average before: " + ", ".join(f"{r.load[0]:.2f}" for r in rounds)
    )
    print(f"  breach -> alert.pending received    {spread(pending)}   (goal p99 <= 1 s)")
    print(
        f"  close deal - (pending + grace)      {spread(vs_receipt)}, "
        f"min {figures['close_vs_receipt_min_s']:.3f}"
        f"; within +-0.5 s: {within}/{len(vs_receipt)}   (goal: all)"
    )
    print(f"  close deal - alert close_at         {spread(vs_close_at)}")
    print(f"  breach -> alert created             {spread(created)}")
    print(f"  alert created -> pending received   {spread(lag)}")
    print(
        "  closing deals per position          "
        + ", ".join(f"{n}: {closes.count(n)} position(s)" for n in sorted(set(closes)))
        + "   (goal: exactly 1 each)"
    )
    for r in rounds:
        print(f"  facts                               {json.dumps(r.facts, default=str)}")
    print(
        f"  CPU s over {seconds:.0f} s from the breach  "
        + ", ".join(f"{k} {v:.2f}" for k, v in figures["cpu_s"].items())
    )
    print(
        "  problems                            "
        + ("; ".join(figures["problems"]) if figures["problems"] else "none")
    )
    return figures


# --- reconciliation with the guards --------------------------------------------------------------------


def run_fanout(
    tree: Path, label: str, args: argparse.Namespace, *, with_guards: bool = False
) -> dict[str, Any]:
    """bench/fanout.py of `tree`, with `make bench-fanout`'s settings (and the guards worker and watch
    running alongside, `--with-guards`); its JSON line."""
    out = Path(tempfile.mkstemp(prefix=f"tg-guards-fanout-{label}-", suffix=".jsonl")[1])
    command = [
        sys.executable,
        "bench/fanout.py",
        "--accounts",
        str(args.fanout_accounts),
        "--concurrency",
        "6",
        "--warm",
        "--redis-db",
        str(args.redis_db),
        "--json",
        str(out),
        *(["--with-guards"] if with_guards else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    print(f"  fanout ({label}): {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("  ")]
    print("\n".join(f"    {ln.strip()}" for ln in lines if "accounts" in ln or "CPU" in ln), flush=True)
    if done.returncode or not out.read_text().strip():
        raise RuntimeError(f"fanout ({label}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    figures = json.loads(out.read_text().splitlines()[-1])
    figures["tree"] = label
    return figures


def fanout_report(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    print()
    print("reconciliation with the guards' reading after every sync (bench/fanout.py, make bench-fanout):")
    keys = (
        "per_10s_cycle",
        "wall_s",
        "worker_cpu_ms_per_account",
        "postgres_cpu_ms_per_account",
        "terminal_cpu_ms_per_account",
        "redis_cpu_ms_per_account",
        "max_worker_rss_mb",
        "loadavg_before",
        "guards_cpu_ms_per_account",
        "watch_ticks_run",
    )
    summary: dict[str, Any] = {}
    for label, results in runs.items():
        summary[label] = {k: [r.get(k) for r in results] for k in keys}
        print(f"  {label}:")
        for k in keys:
            print(f"    {k:<30} {', '.join(str(r.get(k)) for r in results)}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--positions", type=int, default=3, help="open positions per account")
    parser.add_argument("--breaching", type=int, default=100)
    parser.add_argument("--lots", type=float, default=0.3, help="volume of each breaching position")
    parser.add_argument("--move-pips", type=float, default=30.0, help="how far GBPUSD falls at T0")
    parser.add_argument("--max-percent", type=float, default=2.0, help="the close limit's max_percent")
    parser.add_argument("--grace", type=int, default=10, help="grace_seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between readiness and T0")
    parser.add_argument("--after", type=float, default=5.0, help="seconds watched after the last alert")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in every process's environment (e.g. WORKER_CONCURRENCY=4); may be given again",
    )
    parser.add_argument("--redis-db", type=int, default=7)
    parser.add_argument("--no-fanout", dest="fanout", action="store_false")
    parser.add_argument("--fanout-rounds", type=int, default=1, help="fanout rounds per tree")
    parser.add_argument("--fanout-accounts", type=int, default=5000)
    parser.add_argument(
        "--fanout-reference", default="263fb59", help="git revision (or folder) before the guards"
    )
    parser.add_argument("--profile", metavar="NAMES", help="py-spy record these processes over the breach")
    parser.add_argument("--json", help="also append the figures as JSON lines to this file")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    print(
        f"guards benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"{args.rounds} round(s)",
        flush=True,
    )
    rounds = [run_round(args, f"r{i}") for i in range(args.rounds)]
    # --rounds 0: the fanout comparison alone.
    results: list[dict[str, Any]] = [report(rounds, args)] if rounds else []
    if args.fanout:
        reference = extract(args.fanout_reference)
        guarded = "this tree, guards running"
        runs: dict[str, list[dict[str, Any]]] = {args.fanout_reference: [], "this tree": [], guarded: []}
        for _ in range(args.fanout_rounds):
            runs[args.fanout_reference].append(
                run_fanout(reference, re.sub(r"\W+", "-", args.fanout_reference), args)
            )
            runs["this tree"].append(run_fanout(ROOT, "this-tree", args))
            runs[guarded].append(run_fanout(ROOT, "this-tree-guards", args, with_guards=True))
        results.append({"bench": "guards-fanout", **fanout_report(runs)})
    if args.json:
        with open(args.json, "a") as fh:
            for figures in results:
                fh.write(json.dumps(figures, default=str) + "\n")


if __name__ == "__main__":
    main()
