"""Approval-to-order benchmark: how long after an owner approves a signal its order is sent, on the whole
stack as the Procfile runs it.

    PYTHONPATH=. .venv/bin/python bench/approval.py [--approvals 200] [--rate 4] [--burst 1]
        [--accounts 200] [--positions 20] [--rounds 1] [--compare REV] [--redis-db 10] [--json FILE]

Each round builds a system of its own and takes it down again:

- a throw-away Postgres database, built by the Procfile's `release` line (the migrations), dropped at the
  end (also on failure); the Redis database `--redis-db` (default 10), flushed before and after;
- the Procfile's `terminal` (the stock simulated MT5 terminal, no added latency), `web` (gunicorn),
  `worker` (orders, `-Q celery`), `reconciler` (`-Q reconcile`) and `beat`, each started with its
  Procfile command line through /bin/sh as honcho runs it, on free ports (PORT,
  TRADEGUARD_TERMINAL_PORT), with the Procfile's defaults for everything else;
- `--accounts` other accounts with `--positions` open positions each on the terminal, which beat's
  reconciliation tick syncs every 10 s as usual (the expiry sweep every 5 s and the dispatch safety
  net every 15 s run too); the measurement starts once their first sync is done;
- over HTTP: one owner, `--owner-accounts` accounts on the terminal and a strategy client for each; the
  signals to approve are sent (signed) beforehand, then approved with `POST /api/v1/approvals`, paced
  at `--rate` approvals per second on average (exponential gaps, seeded), `--burst` at a time (that
  many at once, each on its own connection); `--warmup` approvals first, two at a time, not counted.

Then it waits until every approved signal's trade is settled and reads, per approval, the server's
timestamps: `approvals.created_at` (web), `trades.created_at` (the worker claimed it), `trades.sent_at`
(set just before the commit that precedes order_send) and `trades.filled_at`, and the orders worker's
`order timing` log line (shared/execution/timing.py, when the tree has it): when the message was
published, when the task started, when the terminal was opened, when the pre-trade checks passed,
when order_send was called (the `sent` commit done) and answered.

Prints p50 / p99 / max of approval created_at -> trade sent_at (the figure the issue sets: p99 <= 100
ms) and the sorted tail, where the time goes per step (p50 / p99 / max of each), CPU per approval
of the web, the orders worker, the reconciler, the terminal, Postgres and Redis, the load average, and
checks of the safety properties: one trade per approval, each sent once (`attempts`, `trade.sent`
audit rows), and one open position on the terminal per filled trade.

`--compare REV` measures the tree at git revision REV (extracted with `git archive` into a temporary
folder) against this working tree, in rounds that alternate between the two (REV first), each round
with `--approvals` approvals: the box's speed drifts and other processes come and go, so a figure is
only compared with one measured alongside it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import FIRST_LOGIN, seed_database, seed_terminal, summarise_profile  # noqa: E402
from bench.procfs import by_name, cpu_seconds, descendants, status_kb  # noqa: E402
from shared.core.signing import sign  # noqa: E402

PROCESSES = ("terminal", "web", "worker", "reconciler", "beat")
OWNER_FIRST_LOGIN = 1001
# The orders worker's log line per execution (shared/execution/timing.py): key=value pairs.
TIMING_LINE = re.compile(r"order timing (.*)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def procfile(tree: Path) -> dict[str, str]:
    commands = {}
    for line in (tree / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if command.strip():
            commands[name.strip()] = command.strip()
    return commands


class Group:
    """Child processes, each in its own process group, logging to a file; all stopped at the end."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, tuple[subprocess.Popen, Any]] = {}

    def start(self, name: str, command: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop_all()
        proc = subprocess.Popen(
            # The Procfile's lines start with `exec` now, an older revision's (--compare) do not: one
            # `exec` either way, so the shell is replaced by the process it starts.
            ["/bin/sh", "-c", f"exec {command.removeprefix('exec ')}"],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = (proc, log)
        return proc

    def pid(self, name: str) -> int:
        return self.procs[name][0].pid

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def check(self, name: str) -> None:
        proc = self.procs[name][0]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-4000:]}")

    def stop_all(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc, log in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group (pool children)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            log.close()


def wait_until(what: str, predicate: Any, timeout: float, check: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.1)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- HTTP -----------------------------------------------------------------------------------------------


class Api:
    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.token: str | None = None

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.token:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        for attempt in (1, 2):
            try:
                self.conn.request(method, f"/api/v1{path}", body=raw, headers=sent)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return response.status, (json.loads(data) if data else None)

    def ok(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        status, answer = self.call(method, path, body, headers)
        if status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer

    def close(self) -> None:
        self.conn.close()


def send_signal(api: Api, client_id: int, secret: str, comment: str, ttl: int) -> int:
    body = json.dumps(
        {
            "instrument": "EURUSD",
            "side": "buy",
            "volume": "0.01",
            "comment": comment,
            "ttl_seconds": ttl,
        }
    ).encode()
    ts = str(int(time.time()))
    headers = {"X-Client-Id": str(client_id), "X-Timestamp": ts, "X-Signature": sign(secret, ts, body)}
    status, answer = api.call("POST", "/signals", body, headers)
    if status != 201:
        raise RuntimeError(f"POST /signals: {status} {answer}")
    return int(answer["id"])


# --- one round --------------------------------------------------------------------------------------------


@dataclass
class Round:
    tree: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per measured approval
    http_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    problems: list[str] = field(default_factory=list)
    # The orders worker's processes (main, then its pool): (RSS, PSS) in MB. PSS shares the pages a pool
    # process still has in common with the others (fork) among them.
    worker_rss_mb: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Stack:
    """One tree's throw-away system, as `stack` started it."""

    tree: Path
    log_dir: Path
    database_url: str
    encryption_key: str
    web_port: int
    terminal_port: int
    env: dict[str, str]
    commands: dict[str, str]
    group: Group
    engine: sa.Engine

    @property
    def terminal_url(self) -> str:
        return f"sim://127.0.0.1:{self.terminal_port}"


@contextlib.contextmanager
def stack(
    tree: Path, args: argparse.Namespace, name: str, label: str, extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """A system of its own for `tree`, as the Procfile runs it: a throw-away Postgres database (from
    `args.admin_url`) built by the `release` line, the Redis database `args.redis_db` flushed, the
    `terminal` process started; the caller starts the other lines (`stack.group`). At the end every
    process is stopped, Redis flushed and the database dropped. `name` names the database, the log
    folder and the secrets; `extra_env` goes on top of the environment (`--env` experiments last)."""
    from cryptography.fernet import Fernet

    database = f"tradeguard_{name}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    database_url = sa.make_url(args.admin_url).set(database=database).render_as_string(hide_password=False)
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    log_dir = Path(tempfile.mkdtemp(prefix=f"tg-{name}-{label}-"))
    encryption_key = Fernet.generate_key().decode()
    web_port, terminal_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TRADEGUARD_", "WEB_", "WORKER_", "RECONCILE_")) and key != "LOG_LEVEL"
    }
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(tree),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PORT": str(web_port),
            "TRADEGUARD_TERMINAL_PORT": str(terminal_port),
            "TRADEGUARD_TERMINALS": f"sim://127.0.0.1:{terminal_port}",
            "TRADEGUARD_INSTANCE_DIR": str(log_dir / "instance"),
            "TRADEGUARD_SECRET_KEY": f"{name}-bench",
            "TRADEGUARD_JWT_SECRET": f"{name}-bench-jwt-secret-long-enough-for-hs256",
            "TRADEGUARD_ENCRYPTION_KEY": encryption_key,
            **(extra_env or {}),
        }
    )
    env.update(dict(item.split("=", 1) for item in getattr(args, "env", [])))  # --env NAME=VALUE
    running = Stack(
        tree,
        log_dir,
        database_url,
        encryption_key,
        web_port,
        terminal_port,
        env,
        procfile(tree),
        Group(log_dir),
        sa.create_engine(database_url, pool_size=2),
    )
    import redis

    redis_client = redis.Redis.from_url(redis_url)
    try:
        redis_client.flushdb()
        release = subprocess.run(
            ["/bin/sh", "-c", f"exec {running.commands['release']}"],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        if release.returncode:
            raise RuntimeError(f"release failed:\n{release.stdout}\n{release.stderr}")
        running.group.start("terminal", running.commands["terminal"], env, tree)
        wait_until("terminal", lambda: listening(terminal_port), 30, lambda: running.group.check("terminal"))
        yield running
    finally:
        running.group.stop_all()
        running.engine.dispose()
        with contextlib.suppress(Exception):
            redis_client.flushdb()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def run_round(tree: Path, label: str, args: argparse.Namespace) -> Round:
    result = Round(tree=label)
    with stack(tree, args, "approval", label) as running:
        log_dir, database_url, encryption_key = running.log_dir, running.database_url, running.encryption_key
        web_port, terminal_port, terminal_url = running.web_port, running.terminal_port, running.terminal_url
        env, commands, group, engine = running.env, running.commands, running.group, running.engine
        background = [(i, FIRST_LOGIN + i, terminal_url) for i in range(args.accounts)]
        tickets = seed_terminal(terminal_port, [login for _, login, _ in background], args.positions)
        from shared.core.config import DEFAULT_MAGIC

        seed_database(database_url, encryption_key, background, tickets, 0, DEFAULT_MAGIC)

        for name in ("web", "worker", "reconciler", "beat"):
            group.start(name, commands[name], env, tree)
        wait_until("web", lambda: listening(web_port), 60, lambda: group.check("web"))
        for name in ("worker", "reconciler"):
            wait_until(
                f"{name} ready", lambda n=name: "ready." in group.log(n), 60, lambda n=name: group.check(n)
            )

        # The owner, their accounts and strategy clients, over the API.
        api = Api(web_port)
        api.ok("POST", "/auth/register", {"email": "owner@example.com", "password": "approval benchmark"})
        login = api.ok(
            "POST", "/auth/login", {"email": "owner@example.com", "password": "approval benchmark"}
        )
        api.token = login["access_token"]
        clients = []
        for k in range(args.owner_accounts):
            account = api.ok(
                "POST",
                "/accounts",
                {
                    "name": f"owner {k}",
                    "terminal_url": terminal_url,
                    "login": OWNER_FIRST_LOGIN + k,
                    "password": "demo",
                    "server": "TradeGuard-Sim",
                },
            )
            client = api.ok("POST", "/clients", {"name": f"strategy {k}", "account_id": account["id"]})
            clients.append((int(client["id"]), str(client["secret"])))

        # Reconciliation as usual: the background accounts' first sync (all of them) is done first.
        total_accounts = args.accounts + args.owner_accounts

        def synced() -> bool:
            with engine.connect() as conn:
                done = conn.execute(
                    sa.text("SELECT count(*) FROM account_sync WHERE last_synced_at IS NOT NULL")
                ).scalar_one()
            return int(done) >= total_accounts

        wait_until("the first reconciliation of every account", synced, 120, lambda: group.check("beat"))

        # The signals to approve, sent beforehand (each its own; a long TTL so that none expires).
        count = args.warmup + args.approvals
        ttl = int(60 + count / args.rate * 3)
        strategy = Api(web_port)  # signed, no bearer token
        signal_ids = [
            send_signal(strategy, *clients[i % len(clients)], comment=f"{label}-{i}", ttl=ttl)
            for i in range(count)
        ]
        strategy.close()

        def approve(signal_id: int, conn: Api, out: list[float]) -> None:
            began = time.perf_counter()
            conn.ok("POST", "/approvals", {"signal_id": signal_id, "decision": "approve"})
            out.append((time.perf_counter() - began) * 1000)

        connections = [Api(web_port) for _ in range(args.burst)]
        for client in connections:
            client.token = api.token
        # Warm-up, two at a time: both of the orders worker's pool processes (WORKER_CONCURRENCY=2) have
        # then run an order, and the measured ones find the system in its steady state. (A pool
        # process's first order also makes its database and terminal connections: 50-90 ms.)
        warm_http: list[float] = []
        warm_connections = [connections[0], Api(web_port)]
        warm_connections[1].token = api.token
        for start in range(0, args.warmup, 2):
            pair = signal_ids[start : min(start + 2, args.warmup)]
            threads = [
                threading.Thread(target=approve, args=(sid, warm_connections[j], warm_http))
                for j, sid in enumerate(pair)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.3)
        warm_connections[1].close()
        time.sleep(2.0)

        pids = {
            name: descendants(group.pid(name)) for name in ("web", "worker", "reconciler", "beat", "terminal")
        }
        pids["worker main"] = [group.pid("worker")]  # the consumer, apart from its pool (its children)
        pids["postgres"] = by_name("postgres")
        pids["redis"] = by_name("redis-server")
        cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
        load_before = os.getloadavg()
        profilers = []
        if args.profile:
            for name in args.profile.split(","):
                out = log_dir / f"{name}.prof"
                profilers.append((name, out, py_spy(group.pid(name), out)))
            time.sleep(1.0)  # py-spy attaches
        rng = random.Random(args.seed)
        measured = signal_ids[args.warmup :]
        began = time.monotonic()
        next_at = began
        for start in range(0, len(measured), args.burst):
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            batch = measured[start : start + args.burst]
            if len(batch) == 1:
                approve(batch[0], connections[0], result.http_ms)
            else:
                threads = [
                    threading.Thread(target=approve, args=(sid, connections[j], result.http_ms))
                    for j, sid in enumerate(batch)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            next_at += rng.expovariate(args.rate / len(batch))
        sent_by = time.monotonic()

        def settled() -> bool:
            with engine.connect() as conn:
                left = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM signals s LEFT JOIN trades t ON t.signal_id = s.id "
                        "WHERE s.id = ANY(:ids) AND (t.id IS NULL OR t.state IN ('pending', 'sent'))"
                    ),
                    {"ids": measured},
                ).scalar_one()
            return int(left) == 0

        wait_until("every trade settled", settled, 60)
        for name, out, profiler in profilers:
            profiler.send_signal(signal.SIGINT)  # py-spy writes the profile on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=60)
            print(f"  py-spy {name} (--gil: what held the GIL, idle waits left out):")
            print("\n".join(summarise_profile(out, top=25)))
        result.seconds = sent_by - began
        pids = {
            name: sorted(set(p) | set(descendants(group.pid(name)) if name in PROCESSES else []))
            for name, p in pids.items()
        }
        cpu_after = {name: cpu_seconds(p) for name, p in pids.items()}
        result.cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_before}
        result.load = load_before
        result.worker_rss_mb = [
            (round((status_kb(pid, "VmRSS") or 0) / 1024, 1), round(pss_kb(pid) / 1024, 1))
            for pid in descendants(group.pid("worker"))
        ]

        timings = {}
        for line in group.log("worker").splitlines():
            match = TIMING_LINE.search(line)
            if match:
                fields = dict(pair.split("=", 1) for pair in match.group(1).split() if "=" in pair)
                with contextlib.suppress(KeyError, ValueError):
                    timings[int(fields["signal"])] = {k: float(v) for k, v in fields.items() if k != "signal"}
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT a.signal_id, extract(epoch FROM a.created_at) AS approved, "
                    "extract(epoch FROM t.created_at) AS claimed, extract(epoch FROM t.sent_at) AS sent, "
                    "extract(epoch FROM t.filled_at) AS filled, t.state, t.attempts, t.account_id, "
                    "(SELECT count(*) FROM audit_log l WHERE l.target_type = 'trade' AND l.target_id = t.id "
                    " AND l.action = 'trade.sent') AS sends "
                    "FROM approvals a JOIN trades t ON t.approval_id = a.id WHERE a.signal_id = ANY(:ids)"
                ),
                {"ids": measured},
            ).all()
            filled = conn.execute(
                sa.text("SELECT count(*) FROM trades WHERE state IN ('filled', 'partial')")
            ).scalar_one()
        for r in rows:
            row = dict(r._mapping)
            row.update({f"t_{k}": v for k, v in timings.get(int(r.signal_id), {}).items()})
            result.rows.append(
                {k: (float(v) if k != "state" and v is not None else v) for k, v in row.items()}
            )
        if len(rows) != len(measured):
            result.problems.append(f"{len(measured)} approvals but {len(rows)} trades")
        not_once = [r for r in rows if r.sends != 1 or r.attempts != 1]
        if not_once:
            result.problems.append(f"{len(not_once)} trade(s) not sent exactly once")
        unfilled = [r for r in rows if r.state != "filled"]
        if unfilled:
            result.problems.append(
                f"{len(unfilled)} trade(s) not filled: {sorted({r.state for r in unfilled})}"
            )
        positions = owner_positions(terminal_port, args.owner_accounts)
        if positions != filled:
            result.problems.append(
                f"{filled} filled trades but {positions} TradeGuard positions on the terminal"
            )
        for name in ("worker", "reconciler", "beat", "web"):
            errors = [ln for ln in group.log(name).splitlines() if " ERROR" in ln or "Traceback" in ln]
            if errors:
                result.problems.append(f"{name} log: {len(errors)} error line(s), first: {errors[0][:200]}")
        for client in [api, *connections]:
            client.close()
    print(f"  round {label}: logs in {log_dir}", flush=True)
    return result


def py_spy(pid: int, out: Path) -> subprocess.Popen:
    """py-spy record of a process and its children (the worker's pool), until SIGINT."""
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--subprocesses"]
    options = ["--gil", "--rate", "500", "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(command + options, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def owner_positions(port: int, accounts: int) -> int:
    """Open positions carrying TradeGuard's magic number on the owner's accounts, asked of the terminal."""
    import rpyc

    from shared.core.config import DEFAULT_MAGIC

    conn = rpyc.classic.connect("127.0.0.1", port)
    try:
        conn.execute("import MetaTrader5 as mt5")
        conn.execute(
            "def _bench_count(logins, magic):\n"
            "    n = 0\n"
            "    for login in logins:\n"
            "        mt5.initialize(login=login, password='demo', server='TradeGuard-Sim')\n"
            "        n += sum(1 for p in (mt5.positions_get() or ()) if p.magic == magic)\n"
            "    return n\n"
        )
        logins = [OWNER_FIRST_LOGIN + k for k in range(accounts)]
        return int(conn.namespace["_bench_count"](logins, DEFAULT_MAGIC))
    finally:
        conn.close()


# --- figures ------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (p99 of 200 values is the 198th smallest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


# Steps from the approval's row to order_send, from the worker's timing line (ms after publishing).
STEPS = (
    ("web", "approval created -> enqueued (approval's audit row, commit, publish)"),
    ("queue", "enqueued -> task started in the worker (broker, worker, pool)"),
    ("claim", "task started -> trade claimed (signal reloaded, trade row, commit)"),
    ("lock", "trade claimed -> terminal asked for (trade lock, account)"),
    ("connect", "terminal asked for -> open and logged in"),
    ("checks", "terminal open -> pre-trade checks passed (symbol, quote)"),
    ("commit", "checks passed -> order_send called (trade `sent`, audit row, commit)"),
)


def steps_of(row: dict[str, Any]) -> dict[str, float] | None:
    """Milliseconds per step for one approval, when the worker logged its timing line."""
    if "t_published" not in row:
        return None
    published = row["t_published"]

    def at(name: str) -> float | None:
        value = row.get(f"t_{name}")
        return None if value is None else published + value / 1000

    marks = [
        ("web", row["approved"], published),
        ("queue", published, at("started")),
        ("claim", at("started"), row["claimed"]),
        ("lock", row["claimed"], at("opening")),
        ("connect", at("opening"), at("opened")),
        ("checks", at("opened"), at("checked")),
        ("commit", at("checked"), at("sending")),
    ]
    return {name: (b - a) * 1000 for name, a, b in marks if a is not None and b is not None}


def spread(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5):.1f}  p99 {pct(values, 0.99):.1f}  max {max(values):.1f}"


def report(label: str, rounds: list[Round], args: argparse.Namespace) -> dict[str, Any]:
    # Trades rejected before sending have no sent_at (and are counted under `safety`).
    rows = [r for rnd in rounds for r in rnd.rows if r["sent"] is not None]
    e2e = [(r["sent"] - r["approved"]) * 1000 for r in rows]
    to_send = [
        (r["t_published"] + r["t_sending"] / 1000 - r["approved"]) * 1000
        for r in rows
        if "t_sending" in r and "t_published" in r
    ]
    answered = [r["t_answered"] - r["t_sending"] for r in rows if "t_answered" in r and "t_sending" in r]
    task_cpu = [r["t_cpu"] for r in rows if "t_cpu" in r]
    approvals = len(rows)
    http_ms = [x for rnd in rounds for x in rnd.http_ms]
    cpu = {name: sum(rnd.cpu.get(name, 0.0) for rnd in rounds) for name in rounds[0].cpu}
    seconds = sum(rnd.seconds for rnd in rounds)
    figures: dict[str, Any] = {
        "tree": label,
        "approvals": approvals,
        "p50_ms": pct(e2e, 0.50),
        "p99_ms": pct(e2e, 0.99),
        "max_ms": max(e2e) if e2e else float("nan"),
        "tail_ms": [round(x, 1) for x in sorted(e2e)[-5:]],
        "approval_http_p50_ms": pct(http_ms, 0.5),
        "approval_http_p99_ms": pct(http_ms, 0.99),
        "cpu_ms_per_approval": {k: round(v / max(1, approvals) * 1000, 2) for k, v in cpu.items()},
        "rate_per_s": approvals / seconds if seconds else float("nan"),
        "load_before": [rnd.load for rnd in rounds],
        "problems": [p for rnd in rounds for p in rnd.problems],
    }
    print()
    print(
        f"{label}: {approvals} approvals in {len(rounds)} round(s), {figures['rate_per_s']:.1f}/s "
        f"(burst {args.burst}), {args.accounts} other accounts x {args.positions} positions reconciled "
        f"every 10 s; load average before: " + ", ".join(f"{rnd.load[0]:.2f}" for rnd in rounds)
    )
    print(f"  approval created -> trade sent_at   {spread(e2e)} ms   (goal p99 <= 100)")
    print(f"  slowest five                        {', '.join(f'{x:.0f}' for x in sorted(e2e)[-5:])} ms")
    if len(rounds) > 1:
        each = [
            [(r["sent"] - r["approved"]) * 1000 for r in rnd.rows if r["sent"] is not None] for rnd in rounds
        ]
        figures["rounds"] = [{"p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": max(v)} for v in each if v]
        print(
            "  each round (p50/p99/max)            "
            + "; ".join(f"{f['p50']:.1f}/{f['p99']:.1f}/{f['max']:.1f}" for f in figures["rounds"])
            + " ms"
        )
    if to_send:
        print(f"  approval created -> order_send call {spread(to_send)} ms")
        print(f"  order_send call -> answered         {spread(answered)} ms")
    if task_cpu:
        print(f"  task thread CPU, start -> answered  {spread(task_cpu)} ms   (time.thread_time)")
        figures["task_cpu_ms_p50"] = pct(task_cpu, 0.5)
    print(f"  POST /approvals (client side)       {spread(http_ms)} ms")
    broken = [(total, steps_of(r)) for total, r in zip(e2e, rows, strict=True)]
    broken_rows = [b for _, b in broken if b]
    if broken_rows:
        print(f"  where the time goes (ms; {len(broken_rows)} approvals with the worker's timing line):")
        print(f"    {'step':<9}{'p50':>7}{'p99':>8}{'max':>8}")
        for name, what in STEPS:
            values = [b[name] for b in broken_rows if name in b]
            if values:
                p50, p99 = pct(values, 0.5), pct(values, 0.99)
                print(f"    {name:<9}{p50:>7.1f}{p99:>8.1f}{max(values):>8.1f}   {what}")
                figures.setdefault("steps", {})[name] = {"p50": p50, "p99": p99, "max": max(values)}
        print("    the five slowest approvals, step by step:")
        slowest = sorted(((t, b) for t, b in broken if b), key=lambda x: x[0], reverse=True)
        for total, b in slowest[:5]:
            print(f"      {total:6.1f} ms: " + ", ".join(f"{k} {v:.1f}" for k, v in b.items()))
    else:
        claim = [(r["claimed"] - r["approved"]) * 1000 for r in rows]
        send = [(r["sent"] - r["claimed"]) * 1000 for r in rows]
        print("  where the time goes (no worker timing lines: from the rows' timestamps only):")
        print(f"    approval created -> trade claimed   {spread(claim)}")
        print(f"    trade claimed -> sent_at            {spread(send)}")
    print(
        "  CPU ms per approval                 "
        + ", ".join(f"{k} {v:.2f}" for k, v in figures["cpu_ms_per_approval"].items())
        + "   (everything each process did meanwhile, reconciliation and sweeps included)"
    )
    print(
        "  orders worker RSS / PSS             "
        + "; ".join(", ".join(f"{rss:.0f}/{pss:.0f}" for rss, pss in rnd.worker_rss_mb) for rnd in rounds)
        + " MB (main process, then each pool process; per round)"
    )
    print(
        "  safety                              "
        + (
            "; ".join(figures["problems"])
            if figures["problems"]
            else "every trade sent once and filled; one position each"
        )
    )
    return figures


def extract(rev: str) -> Path:
    """The tree at git revision `rev`, extracted into a temporary folder; `rev` may also name a folder
    that holds a tree (an experiment), used as it is."""
    if Path(rev).is_dir():
        return Path(rev).resolve()
    folder = Path(tempfile.mkdtemp(prefix="tg-approval-ref-"))
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--approvals", type=int, default=200, help="measured approvals per round")
    parser.add_argument("--warmup", type=int, default=10, help="approvals first, not measured")
    parser.add_argument("--rate", type=float, default=4.0, help="approvals per second, on average")
    parser.add_argument(
        "--burst", type=int, default=1, help="approvals sent at once, each on its own connection"
    )
    parser.add_argument("--accounts", type=int, default=200, help="other accounts, reconciled every 10 s")
    parser.add_argument("--positions", type=int, default=20, help="open positions per other account")
    parser.add_argument("--owner-accounts", type=int, default=4, help="the approving owner's accounts")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per tree")
    parser.add_argument(
        "--compare",
        metavar="REV",
        action="append",
        default=[],
        help="also measure git revision (or folder) REV, in alternating rounds (may be given again)",
    )
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--redis-db", type=int, default=10)
    parser.add_argument("--json", help="also append the figures as JSON lines to this file")
    parser.add_argument(
        "--profile",
        metavar="NAMES",
        help="py-spy record these processes over the measured approvals (comma-separated: worker, web, "
        "terminal, reconciler, beat) and print their busiest frames",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    trees: list[tuple[str, Path]] = []
    for rev in args.compare:
        trees.append((rev, extract(rev)))
    trees.append(("this tree", ROOT))
    rounds: dict[str, list[Round]] = {label: [] for label, _ in trees}
    print(
        f"approval benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"{args.rounds} round(s) x {len(trees)} tree(s) x {args.approvals} approvals",
        flush=True,
    )
    for _ in range(args.rounds):
        for label, tree in trees:
            rounds[label].append(run_round(tree, re.sub(r"\W+", "-", label).strip("-"), args))
    results = [report(label, rounds[label], args) for label, _ in trees]
    if args.json:
        with open(args.json, "a") as fh:
            for figures in results:
                fh.write(json.dumps(figures, default=str) + "\n")


if __name__ == "__main__":
    main()
