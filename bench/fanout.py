"""Reconciliation fan-out benchmark: one beat tick, real Celery workers, the real `terminal` process.

    PYTHONPATH=. .venv/bin/python bench/fanout.py --accounts 1000 [--pool prefork] [--concurrency 2]
        [--batch-size 100] [--threads 100] [--workers 1] [--latency-ms 100] [--terminals 1]
        [--warm] [--profile 5] [--with-guards]

It creates a throw-away Postgres database (built with the migrations, dropped at the end, also on
failure), flushes a Redis database (default 14), starts the simulated MT5 `terminal` process(es), bulk-
inserts N users and accounts (`terminal_url=sim://127.0.0.1:<port>`, distinct logins, Fernet-encrypted
credentials with the workers' key) and opens `--positions` positions on each account through the
simulator's control surface (`sim_open_manual`, over RPyC classic). `--trades K` also books K TradeGuard
trades per account (signal + approval + filled trade rows) that match K of those positions by ticket.
It then sets the terminal latency (`sim_set_latency`, every terminal call sleeps that long), starts the
Celery worker process(es) with the chosen pool, concurrency and TRADEGUARD_RECONCILE_BATCH_SIZE, waits
until they are ready, sends ONE `tradeguard.reconcile_tick` and polls Postgres until every account has
`account_sync.last_synced_at` after the tick (or failed: `last_error` set), with a timeout.

`--warm` first runs one unmeasured tick (fills the workers' symbol cache, the accounts' sync rows and
the recorded outside positions; two with `--with-guards`, see there) and then measures the next one: the
steady state of a running system.

The terminal is the stock one (`python -m workers.terminal`): the simulator indexes open positions by
login and symbol and checks stops and stop-outs only where prices moved past them, so a call costs the
calling account's positions, not the whole book's. `--sim stock|indexed` is still accepted for old
command lines; both mean the stock terminal (the patched `bench/fanout_sim.py` is gone).

The tick's messages expire after TRADEGUARD_RECONCILE_INTERVAL_SECONDS; the benchmark sets it to
`--interval` (default 3600) so that a backlog is measured, not dropped, and reports separately how many
accounts were reconciled within 10 s of the tick.

`--with-guards` runs the guards beside it, as deployed: a `-Q guards` worker (the Procfile's, prefork -c
2) and a guard watch tick sent every TRADEGUARD_GUARD_WATCH_SECONDS (0.5 s, with the same expiry as
beat's) from before the workers are primed until the measured tick is done; the measured workers then
consume the other two queues. The simulator's prices walk on their own, so every tick quotes the held
symbols and re-estimates the accounts whose sync moved. A symbol quoting over the accounts' maximum
spread (the simulator's gold did, under the earlier default of 20 pips) has its holders' market warning
start in the first warm-up tick and told in the second (`warm_tick_2_s`: an episode's start, every
holder's reading through the engine), so the measured tick is the steady state either way. The guards
worker's CPU and the watch ticks run are printed beside the reconciliation figures.

Prints: accounts reconciled, wall time, accounts per 10-s cycle (N / wall x 10), per-account sync time
p50/p99 (account_sync.last_sync_ms), CPU time per account of the worker processes (with their pool
children) and of the terminal (and Postgres, Redis), peak RSS (VmHWM) of each worker process, failures.
Goal (issue): >= 5,000 accounts per 10-s cycle on a 2-core box, worker RSS <= 150 MB per process.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procfs import by_name, cpu_seconds, descendants, status_kb  # noqa: E402

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
FIRST_LOGIN = 5_000_001


# --- processes ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"terminal on {port} did not start:\n{log.read_text()}") from None
            time.sleep(0.1)


class Group:
    """Child processes, each in its own process group; all killed at the end."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen, Any]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop_all()
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc, log))
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc, log in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left (pool children)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            log.close()


def celery_worker(options: list[str]) -> list[str]:
    """A Celery worker's command line with these options (pool, concurrency, queues, name)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--loglevel=INFO",
        *options,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def threads_of(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


# --- setup --------------------------------------------------------------------------------------------


def migrate(env: dict[str, str]) -> None:
    os.environ.update(env)
    from flask_migrate import upgrade

    from shared.core.config import load_settings
    from shared.core.db import db
    from web import create_app

    app = create_app(load_settings())
    with app.app_context():
        upgrade()
        db.engine.dispose()


def seed_terminal(port: int, logins: list[int], positions: int) -> dict[int, list[int]]:
    """Open `positions` positions per login through the control surface; returns login -> tickets.

    Each sim_open_manual runs the broker's server-side sweep (O(accounts x positions) on the stock
    simulator), which would make seeding quadratic; the sweep is switched off for the seeding only
    (nothing can trigger during it: no SL/TP, tiny volumes) and restored afterwards.
    """
    import rpyc

    conn = rpyc.classic.connect("127.0.0.1", port)
    try:
        conn._config["sync_request_timeout"] = 600
        conn.execute("import MetaTrader5 as mt5")
        conn.execute(
            "def _bench_seed(logins, positions, symbols):\n"
            "    broker = mt5.sim_broker\n"
            "    broker._refresh = lambda: None\n"
            "    try:\n"
            "        out = {}\n"
            "        for login in logins:\n"
            "            out[login] = [mt5.sim_open_manual(login, symbols[i % len(symbols)], i % 2, 0.01)\n"
            "                          for i in range(positions)]\n"
            "        return out\n"
            "    finally:\n"
            "        del broker._refresh\n"
        )
        tickets = conn.namespace["_bench_seed"](list(logins), positions, list(SYMBOLS))
        return {int(k): list(v) for k, v in rpyc.classic.obtain(tickets).items()}
    finally:
        conn.close()


def set_latency(port: int, ms: float) -> None:
    import rpyc

    conn = rpyc.classic.connect("127.0.0.1", port)
    try:
        conn.execute("import MetaTrader5 as mt5")
        conn.eval("mt5.sim_set_latency")(ms)
    finally:
        conn.close()


def seed_database(
    database_url: str,
    encryption_key: str,
    accounts: list[tuple[int, int, str]],
    tickets: dict[int, list[int]],
    trades_per_account: int,
    magic: int,
) -> None:
    """Bulk-insert users, accounts (and optionally matching signals/approvals/trades) with Core."""
    from shared.core.crypto import SecretBox
    from shared.models import Account, User

    box = SecretBox([encryption_key])
    now = datetime.now(UTC)
    engine = sa.create_engine(database_url)
    run = uuid.uuid4().hex[:6]
    try:
        with engine.begin() as conn:
            user_ids = (
                conn.execute(
                    sa.insert(User.__table__).returning(User.__table__.c.id),
                    [
                        {
                            "email": f"fanout-{run}-{i}@example.com",
                            "password_hash": "x",
                            "role": "user",
                            "created_at": now,
                        }
                        for i in range(len(accounts))
                    ],
                )
                .scalars()
                .all()
            )
            account_rows = [
                {
                    "owner_id": user_ids[i],
                    "name": f"fanout {login}",
                    "terminal_url": url,
                    "login": login,
                    "server": "TradeGuard-Sim",
                    "credentials_encrypted": box.encrypt(f"pw-{login}"),
                    "currency": "USD",
                    "created_at": now,
                }
                for i, (_, login, url) in enumerate(accounts)
            ]
            account_ids = (
                conn.execute(sa.insert(Account.__table__).returning(Account.__table__.c.id), account_rows)
                .scalars()
                .all()
            )
            if trades_per_account:
                _seed_trades(
                    conn,
                    box,
                    now,
                    run,
                    user_ids,
                    account_ids,
                    accounts,
                    tickets,
                    trades_per_account,
                    magic,
                )
    finally:
        engine.dispose()


def _seed_trades(
    conn,
    box,
    now,
    run,
    user_ids,
    account_ids,
    accounts,
    tickets,
    k,
    magic,
):
    """K filled TradeGuard trades per account, matched to the terminal's positions by ticket. Columns
    are filled from the tables themselves: any NOT NULL column without a default gets a plausible value."""
    from shared.models import Approval, Signal, StrategyClient, Trade

    def fill(table: sa.Table, row: dict[str, Any]) -> dict[str, Any]:
        for column in table.columns:
            if column.name in row or column.nullable or column.primary_key:
                continue
            if column.default is not None or column.server_default is not None:
                if callable(getattr(column.default, "arg", None)) or column.server_default is not None:
                    continue
                row[column.name] = column.default.arg
                continue
            try:
                kind = column.type.python_type
            except NotImplementedError:
                kind = str
            if kind is datetime:
                row[column.name] = now
            elif kind is int:
                row[column.name] = 0
            elif kind is bytes:
                row[column.name] = b"x"
            elif kind is dict:
                row[column.name] = {}
            elif kind is bool:
                row[column.name] = False
            else:
                row[column.name] = "0"
        return row

    clients = (
        conn.execute(
            sa.insert(StrategyClient.__table__).returning(StrategyClient.__table__.c.id),
            [
                fill(
                    StrategyClient.__table__,
                    {
                        "owner_id": u,
                        "account_id": a,
                        "name": "bench",
                        "secret_encrypted": box.encrypt("s"),
                        "revoked": False,
                        "created_at": now,
                    },
                )
                for u, a in zip(user_ids, account_ids, strict=True)
            ],
        )
        .scalars()
        .all()
    )
    signal_rows, meta = [], []
    for i, (_, login, _) in enumerate(accounts):
        for j, ticket in enumerate(tickets[login][:k]):
            symbol, side = SYMBOLS[j % len(SYMBOLS)], ("buy", "sell")[j % 2]
            signal_rows.append(
                fill(
                    Signal.__table__,
                    {
                        "client_id": clients[i],
                        "account_id": account_ids[i],
                        "owner_id": user_ids[i],
                        "instrument": symbol,
                        "side": side,
                        "volume": "0.01",
                        "status": "approved",
                        "created_at": now,
                        "decided_at": now,
                        "expires_at": now,
                        "idempotency_key": f"{run}-{login}-{j}",
                        "comment": f"{run}-{login}-{j}",
                        # Signatures are unique (replay protection): one per seeded signal.
                        "signature": f"{run}-{login}-{j}",
                    },
                )
            )
            meta.append((i, j, ticket, symbol, side))
    table = Signal.__table__
    signal_rows = [{k2: v for k2, v in r.items() if k2 in table.c} for r in signal_rows]
    signal_ids = conn.execute(sa.insert(table).returning(table.c.id), signal_rows).scalars().all()
    table = Approval.__table__
    approval_rows = [
        fill(
            table,
            {
                k2: v
                for k2, v in {
                    "signal_id": sid,
                    "owner_id": user_ids[m[0]],
                    "user_id": user_ids[m[0]],
                    "decided_by": user_ids[m[0]],
                    "decision": "approve",
                    "created_at": now,
                    "decided_at": now,
                }.items()
                if k2 in table.c
            },
        )
        for sid, m in zip(signal_ids, meta, strict=True)
    ]
    approval_ids = conn.execute(sa.insert(table).returning(table.c.id), approval_rows).scalars().all()
    table = Trade.__table__
    trade_rows = []
    for sid, aid, (i, j, ticket, symbol, side) in zip(signal_ids, approval_ids, meta, strict=True):
        trade_rows.append(
            fill(
                table,
                {
                    "signal_id": sid,
                    "approval_id": aid,
                    "account_id": account_ids[i],
                    "owner_id": user_ids[i],
                    "symbol": symbol,
                    "side": side,
                    "state": "filled",
                    "magic": magic,
                    "comment": f"TG-b{run}{i}x{j}"[:31],
                    "requested_volume": "0.01",
                    "filled_volume": "0.01",
                    "order_ticket": ticket,
                    "deal_ticket": ticket,
                    "position_ticket": ticket,
                    "attempts": 1,
                    "created_at": now,
                    "sent_at": now,
                    "filled_at": now,
                    "updated_at": now,
                },
            )
        )
    conn.execute(sa.insert(table), trade_rows)


# --- measuring ----------------------------------------------------------------------------------------


def wait_for_tick(
    engine: sa.Engine, since: datetime, n: int, timeout: float, sample: Any = None
) -> tuple[float, int, int, float | None]:
    """Poll until n accounts synced (or failed) after `since`. Returns (seconds, synced, failed,
    seconds until the first 10-s mark's count was taken or None)."""
    query = sa.text(
        "SELECT count(*) FILTER (WHERE last_synced_at > :t), "
        "count(*) FILTER (WHERE last_error IS NOT NULL AND last_attempt_at > :t) FROM account_sync"
    )
    began = time.monotonic()
    synced = failed = 0
    while time.monotonic() - began < timeout:
        with engine.connect() as conn:
            synced, failed = conn.execute(query, {"t": since}).one()
        if sample is not None:
            sample()
        if synced + failed >= n:
            break
        time.sleep(0.1)
    return time.monotonic() - began, synced, failed, None


# What `workers.tasks.guard_watch` logs when the tick before it still holds the watch's turn.
WATCH_SKIPPED = "this one skips its turn"


def watch_ticks(log: str) -> tuple[list[float], int]:
    """The run time in seconds of each guard watch tick that looked at the accounts in this worker log
    (Celery's `Task ... succeeded in Xs` line, in log order), and how many skipped their turn instead:
    those end in a millisecond, and counted as ticks they hid how long the real ones took."""
    times = [
        float(match.group(1))
        for match in re.finditer(r"Task tradeguard\.guard_watch\[[^\]]+\] succeeded in ([0-9.]+)s", log)
    ]
    skipped = log.count(WATCH_SKIPPED)
    # A skipped turn also succeeds: the fastest ones are the skips.
    return sorted(times)[skipped:], skipped


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(ROOT / ".venv/bin/py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--format",
            "raw",
            "--rate",
            "200",
            # Only the thread holding the GIL: hundreds of threads sleeping in the simulated latency or
            # waiting on sockets would otherwise drown what costs CPU.
            "--gil",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def summarise_profile(path: Path, top: int = 12) -> list[str]:
    """Top frames by inclusive share of non-idle samples from py-spy's collapsed output."""
    if not path.exists():
        return [f"(no profile at {path})"]
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        leaf = frames[-1] if frames else "?"
        # idle waiting: skip stacks whose leaf is a blocking wait
        if any(
            w in leaf
            for w in (
                "wait (threading",
                "select (",
                "poll (",
                "sleep",
                "_wait_for_tstate_lock",
                "acquire (",
                "recv_into",
                "accept (",
            )
        ):
            continue
        total += n
        own[leaf] += n
        for f in set(frames):
            inclusive[f] += n
    lines = [f"    busy samples: {total}"]
    lines.append("    self:")
    for frame, n in own.most_common(top):
        lines.append(f"      {100 * n / max(1, total):5.1f}%  {frame[:150]}")
    lines.append("    inclusive:")
    for frame, n in inclusive.most_common(top + 8):
        lines.append(f"      {100 * n / max(1, total):5.1f}%  {frame[:150]}")
    return lines


def run_tick(celery: Any, engine: sa.Engine, n: int, timeout: float, sample: Any = None) -> dict[str, Any]:
    with engine.connect() as conn:
        since = conn.execute(sa.text("SELECT now()")).scalar_one()
    celery.send_task("tradeguard.reconcile_tick")
    wall, synced, failed, _ = wait_for_tick(engine, since, n, timeout, sample)
    return {"since": since, "wall": wall, "synced": synced, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--positions", type=int, default=20, help="open positions per account")
    parser.add_argument(
        "--trades", type=int, default=0, help="TradeGuard trades per account matching positions"
    )
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument(
        "--latency-mode",
        choices=("call", "reply"),
        default="call",
        help="how the terminal simulates the latency (python -m workers.terminal --latency-mode): the "
        "client waits latency-ms per call either way",
    )
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads", "solo"))
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="separate worker processes (celery instances)")
    parser.add_argument("--batch-size", type=int, default=100, help="TRADEGUARD_RECONCILE_BATCH_SIZE")
    parser.add_argument("--threads", type=int, default=100, help="TRADEGUARD_RECONCILE_THREADS")
    parser.add_argument(
        "--sim", default="stock", choices=("stock", "indexed"), help="ignored: both are the stock terminal"
    )
    parser.add_argument("--terminals", type=int, default=1, help="terminal processes (accounts spread)")
    parser.add_argument("--warm", action="store_true", help="measure a second tick after a warm-up tick")
    parser.add_argument(
        "--no-prime",
        dest="prime",
        action="store_false",
        help="do not send one single-account task per pool slot before the measured tick",
    )
    parser.add_argument(
        "--interval", type=float, default=3600.0, help="TRADEGUARD_RECONCILE_INTERVAL_SECONDS"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the tick")
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy record this many seconds")
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--json", help="also append the figures as one JSON line to this file")
    parser.add_argument(
        "--with-guards",
        action="store_true",
        help="run a -Q guards worker and send a guard watch tick every 0.5 s meanwhile",
    )
    parser.add_argument("--watch-seconds", type=float, default=0.5, help="with --with-guards")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    n = args.accounts
    hard_deadline = time.monotonic() + args.timeout * (3 if args.warm else 1) + 600

    from cryptography.fernet import Fernet

    from shared.core.config import DEFAULT_MAGIC

    database = f"tradeguard_fanout_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    database_url = sa.make_url(args.admin_url).set(database=database).render_as_string(hide_password=False)
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    log_dir = Path(tempfile.mkdtemp(prefix="tg-fanout-"))
    encryption_key = Fernet.generate_key().decode()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TRADEGUARD_INSTANCE_DIR": str(log_dir / "instance"),
        "TRADEGUARD_SECRET_KEY": "fanout-bench",
        "TRADEGUARD_JWT_SECRET": "fanout-bench-jwt-secret-long-enough-for-hs256",
        "TRADEGUARD_ENCRYPTION_KEY": encryption_key,
        "TRADEGUARD_RECONCILE_BATCH_SIZE": str(args.batch_size),
        "TRADEGUARD_RECONCILE_THREADS": str(args.threads),
        "TRADEGUARD_RECONCILE_INTERVAL_SECONDS": str(args.interval),
        "LOG_LEVEL": "WARNING",
    }
    group = Group(log_dir)
    engine = None
    celery = None
    results: dict[str, Any] = {}
    try:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        migrate(env)

        # Terminals.
        ports, terminal_pids = [], []
        module = "workers.terminal"
        for t in range(args.terminals):
            port = free_port()
            listen = ["--host", "127.0.0.1", "--port", str(port)]
            proc = group.start(
                f"terminal{t}",
                [sys.executable, "-m", module, *listen, "--latency-mode", args.latency_mode],
                env,
            )
            wait_for_port(port, proc, log_dir / f"terminal{t}.log")
            ports.append(port)
            terminal_pids.append(proc.pid)

        # The workers may reach only declared terminals: these, started just now.
        env["TRADEGUARD_TERMINALS"] = ",".join(f"sim://127.0.0.1:{port}" for port in ports)
        logins = [FIRST_LOGIN + i for i in range(n)]
        accounts = [(i, login, f"sim://127.0.0.1:{ports[i % len(ports)]}") for i, login in enumerate(logins)]
        began = time.monotonic()
        tickets: dict[int, list[int]] = {}
        for t, port in enumerate(ports):
            tickets.update(
                seed_terminal(port, [lg for i, lg, _ in accounts if i % len(ports) == t], args.positions)
            )
        seed_database(database_url, encryption_key, accounts, tickets, args.trades, DEFAULT_MAGIC)
        print(
            f"seeded {n} accounts x {args.positions} positions in {time.monotonic() - began:.1f} s "
            f"(logs: {log_dir})",
            flush=True,
        )
        for port in ports:
            set_latency(port, args.latency_ms)

        # Workers.
        worker_procs = []
        for w in range(args.workers):
            options = ["-P", args.pool, f"--concurrency={args.concurrency}", f"--hostname=fanout{w}@%h"]
            if args.with_guards:
                options += ["-Q", "celery,reconcile"]
            worker_procs.append(group.start(f"worker{w}", celery_worker(options), env))
        guards_proc = None
        if args.with_guards:  # as the Procfile's `guards` line runs it
            guards_options = ["-Q", "guards", "--concurrency=2", "--hostname=guards@%h"]
            guards_proc = group.start("guards", celery_worker(guards_options), env)
        deadline = time.monotonic() + 60
        starting = [(f"worker{w}", proc) for w, proc in enumerate(worker_procs)]
        starting += [("guards", guards_proc)] if guards_proc is not None else []
        for name, proc in starting:
            while "ready." not in group.log(name):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n{group.log(name)}")
                time.sleep(0.1)
        time.sleep(1.0)  # let prefork children finish booting

        from celery import Celery

        celery = Celery("fanout-bench", broker=redis_url)
        celery.conf.task_serializer = "json"
        engine = sa.create_engine(database_url, pool_size=1)
        watch_stop = threading.Event()
        watch_sent = 0
        if args.with_guards:

            def send_watch_ticks() -> None:
                # As beat does: one tick per interval whether the last has ended or not, expiring
                # after one interval.
                nonlocal watch_sent
                while not watch_stop.wait(args.watch_seconds):
                    celery.send_task("tradeguard.guard_watch", queue="guards", expires=args.watch_seconds)
                    watch_sent += 1

            watcher = threading.Thread(target=send_watch_ticks, name="watch-beat", daemon=True)
            watcher.start()

        if args.prime:
            # One single-account task per pool slot, so that every worker process builds its Flask app
            # (and engine) before the measured tick instead of racing to build one per thread during it.
            slots = args.workers * args.concurrency
            with engine.connect() as conn:
                since = conn.execute(sa.text("SELECT now()")).scalar_one()
                ids = (
                    conn.execute(sa.text("SELECT id FROM accounts ORDER BY id LIMIT :k"), {"k": slots})
                    .scalars()
                    .all()
                )
            for account_id in ids:
                celery.send_task("tradeguard.reconcile_accounts", args=[[account_id]])
            primed = wait_for_tick(engine, since, len(ids), 60)
            print(f"primed {slots} pool slot(s): {primed[1]} synced in {primed[0]:.1f} s", flush=True)
        # With the guards running, the watch's quotes reach the market guard during the first warm-up
        # tick: a symbol over the maximum spread (the simulator's gold, under the earlier default) starts
        # a streak on every holder's reading, and the next tick's readings tell the warning, through the
        # engine, a reading at a time. Both happen once per episode; a second warm-up tick keeps them out
        # of the measured one (its own figures are printed: the cost of an episode's start).
        warm_ticks = (2 if args.with_guards else 1) if args.warm else 0
        for number in range(1, warm_ticks + 1):
            warm = run_tick(celery, engine, n, args.timeout)
            print(
                f"warm-up tick {number}: {warm['synced']} synced, {warm['failed']} failed in "
                f"{warm['wall']:.1f} s",
                flush=True,
            )
            results[f"warm_tick_{number}_s"] = round(warm["wall"], 2)
            time.sleep(1.0)

        worker_pids = [p for proc in worker_procs for p in descendants(proc.pid)]
        terminal_all = [p for pid in terminal_pids for p in descendants(pid)]
        pg_pids, redis_pids = by_name("postgres"), by_name("redis-server")
        cpu_before = {
            "workers": cpu_seconds(worker_pids),
            "terminal": cpu_seconds(terminal_all),
            "postgres": cpu_seconds(pg_pids),
            "redis": cpu_seconds(redis_pids),
        }
        load_before = os.getloadavg()[0]
        profilers = []
        if args.profile:
            profilers.append(("terminal", py_spy(terminal_pids[0], args.profile, log_dir / "terminal.prof")))
            # The busiest worker process: the pool child for prefork, the main process for threads/solo.
            targets = [p for p in worker_pids if p not in [wp.pid for wp in worker_procs]] or worker_pids
            profilers.append(("worker", py_spy(targets[0], args.profile, log_dir / "worker.prof")))
        peak_threads: dict[int, int] = {}

        def sample() -> None:
            for p in worker_pids:
                peak_threads[p] = max(peak_threads.get(p, 0), threads_of(p))

        guards_pids = descendants(guards_proc.pid) if guards_proc is not None else []
        guards_before = cpu_seconds(guards_pids)
        guards_log_before = len(group.log("guards")) if guards_proc is not None else 0
        tick = run_tick(celery, engine, n, min(args.timeout, hard_deadline - time.monotonic()), sample)
        guards_after = cpu_seconds(guards_pids)
        watch_during, watch_skipped = (
            watch_ticks(group.log("guards")[guards_log_before:]) if guards_proc is not None else ([], 0)
        )
        watch_stop.set()
        time.sleep(0.5)  # pool children flush their last writes before CPU is read
        worker_pids_after = sorted(
            {p for proc in worker_procs for p in descendants(proc.pid)} | set(worker_pids)
        )
        cpu_after = {
            "workers": cpu_seconds(worker_pids_after),
            "terminal": cpu_seconds(terminal_all),
            "postgres": cpu_seconds(by_name("postgres")),
            "redis": cpu_seconds(redis_pids),
        }
        for _, prof in profilers:
            try:
                prof.wait(timeout=args.profile + 30)
            except subprocess.TimeoutExpired:
                os.killpg(prof.pid, signal.SIGKILL)

        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT last_sync_ms, last_synced_at > :t AS ok, last_error, "
                    "extract(epoch FROM last_synced_at - :t) AS after_s FROM account_sync"
                ),
                {"t": tick["since"]},
            ).all()
            events = conn.execute(
                sa.text("SELECT event_type, count(*) FROM reconciliation_logs GROUP BY 1")
            ).all()
            pg_conns = conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            ).scalar_one()
        durations = sorted(r.last_sync_ms for r in rows if r.ok and r.last_sync_ms is not None)
        errors = collections.Counter((r.last_error or "")[:90] for r in rows if r.last_error)
        within_10s = sum(1 for r in rows if r.ok and r.after_s is not None and r.after_s <= 10.0)
        rss = {}
        for proc in worker_procs:
            for p in descendants(proc.pid):
                rss[p] = (
                    status_kb(p, "VmHWM") or 0,
                    status_kb(p, "VmRSS") or 0,
                    "main" if p == proc.pid else "child",
                    peak_threads.get(p, threads_of(p)),
                )  # peak threads
        terminal_rss = {p: status_kb(p, "VmHWM") or 0 for p in terminal_pids}

        def pct(values: list[int], q: float) -> float:
            return float(values[min(len(values) - 1, int(len(values) * q))]) if values else float("nan")

        wall = tick["wall"]
        results = {
            **results,
            "accounts": n,
            "config": f"{args.workers}x {args.pool} -c {args.concurrency} batch {args.batch_size} "
            f"threads {args.threads} x{args.terminals}{' warm' if args.warm else ''}",
            "reconciled": tick["synced"],
            "failed": tick["failed"],
            "wall_s": round(wall, 2),
            "per_10s_cycle": round(tick["synced"] / wall * 10, 0) if wall else None,
            "within_10s": within_10s,
            "sync_ms_p50": pct(durations, 0.50),
            "sync_ms_p99": pct(durations, 0.99),
            "worker_cpu_ms_per_account": round((cpu_after["workers"] - cpu_before["workers"]) / n * 1000, 2),
            "terminal_cpu_ms_per_account": round(
                (cpu_after["terminal"] - cpu_before["terminal"]) / n * 1000, 2
            ),
            "postgres_cpu_ms_per_account": round(
                (cpu_after["postgres"] - cpu_before["postgres"]) / n * 1000, 2
            ),
            "redis_cpu_ms_per_account": round((cpu_after["redis"] - cpu_before["redis"]) / n * 1000, 2),
            "worker_cpu_utilisation": round((cpu_after["workers"] - cpu_before["workers"]) / wall, 2),
            "terminal_cpu_utilisation": round((cpu_after["terminal"] - cpu_before["terminal"]) / wall, 2),
            "worker_peak_rss_mb": {str(p): round(v[0] / 1024, 1) for p, v in rss.items()},
            "max_worker_rss_mb": round(max((v[0] for v in rss.values()), default=0) / 1024, 1),
            "terminal_peak_rss_mb": round(max(terminal_rss.values(), default=0) / 1024, 1),
            "loadavg_before": round(load_before, 2),
            "with_guards": args.with_guards,
        }
        if args.with_guards:
            watch_seconds = watch_during
            results.update(
                {
                    "guards_cpu_ms_per_account": round((guards_after - guards_before) / n * 1000, 2),
                    "guards_cpu_utilisation": round((guards_after - guards_before) / wall, 2),
                    "watch_ticks_sent": watch_sent,
                    "watch_ticks_run": len(watch_seconds),
                    "watch_ticks_skipped": watch_skipped,
                    "watch_tick_s_p50": pct(watch_seconds, 0.50) if watch_seconds else None,
                    "watch_tick_s_max": watch_seconds[-1] if watch_seconds else None,
                }
            )

        print()
        print(
            f"reconciliation fan-out: {os.cpu_count()} CPUs, {n} accounts x {args.positions} positions "
            f"({args.trades} booked trades each), terminal latency {args.latency_ms:g} ms/call "
            f"(slept per {args.latency_mode}), "
            f"{args.terminals} terminal process(es)"
        )
        print(
            f"workers: {args.workers} x celery -P {args.pool} -c {args.concurrency}, "
            f"TRADEGUARD_RECONCILE_BATCH_SIZE={args.batch_size}, THREADS={args.threads}"
            f"{', warm (tick after the warm-up)' if args.warm else ''}"
        )
        print(f"  accounts reconciled     {tick['synced']} / {n}   (failed: {tick['failed']})")
        print(f"  wall time               {wall:.2f} s   (reconciled within 10 s of the tick: {within_10s})")
        print(f"  accounts per 10-s cycle {results['per_10s_cycle']:.0f}   (goal >= 5000)")
        print(
            f"  sync time p50 / p99     {results['sync_ms_p50']:.0f} / {results['sync_ms_p99']:.0f} ms "
            "(account_sync.last_sync_ms)"
        )
        print(
            f"  CPU ms per account      workers {results['worker_cpu_ms_per_account']:.2f}, "
            f"terminal {results['terminal_cpu_ms_per_account']:.2f}, "
            f"postgres {results['postgres_cpu_ms_per_account']:.2f}, "
            f"redis {results['redis_cpu_ms_per_account']:.2f}"
        )
        print(
            f"  CPU utilisation (cores) workers {results['worker_cpu_utilisation']:.2f}, "
            f"terminal {results['terminal_cpu_utilisation']:.2f}   (load avg before: {load_before:.2f})"
        )
        print(
            "  worker peak RSS (VmHWM) "
            + ", ".join(
                f"{p} {kind} {hwm / 1024:.0f} MB (peak {thr} threads)"
                for p, (hwm, _, kind, thr) in rss.items()
            )
            + "   (goal <= 150 MB)"
        )
        print(
            f"  terminal peak RSS       {results['terminal_peak_rss_mb']:.0f} MB; "
            f"Postgres connections to the bench db at the end: {pg_conns}"
        )
        if args.with_guards:
            print(
                f"  guards alongside        worker CPU {results['guards_cpu_ms_per_account']:.2f} ms per "
                f"account ({results['guards_cpu_utilisation']:.2f} cores); {len(watch_during)} watch "
                f"tick(s) ran during the tick, {results['watch_tick_s_p50']} s p50, "
                f"{results['watch_tick_s_max']} s max, {watch_skipped} turn(s) skipped while one ran "
                f"({watch_sent} sent in all, every {args.watch_seconds:g} s)"
            )
        print(f"  events recorded         {dict(events)}")
        if errors:
            print("  failures:")
            for message, count in errors.most_common(5):
                print(f"    {count} x {message}")
        for name, _ in profilers:
            print(f"  py-spy {name} ({args.profile:g} s from the tick):")
            print("\n".join(summarise_profile(log_dir / f"{name}.prof")))
        worker_log = "\n".join(group.log(f"worker{w}") for w in range(args.workers))
        if guards_proc is not None:
            worker_log += "\n" + group.log("guards")
        problems = [line for line in worker_log.splitlines() if "ERROR" in line or "Traceback" in line]
        if problems:
            print(f"  worker log: {len(problems)} error line(s), first: {problems[0][:200]}")
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(results, default=str) + "\n")
    finally:
        group.stop_all()
        if engine is not None:
            engine.dispose()
        try:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        except Exception as exc:
            print(f"redis flush failed: {exc}", file=sys.stderr)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
