"""Ingest benchmark: signed signals into TradeGuard under gunicorn on Postgres, against a bare Flask
endpoint served the same way on the same box.

    PYTHONPATH=. .venv/bin/python bench/ingest.py [--requests 8000] [--concurrency 8] [--rounds 4]

It creates a throw-away Postgres database (dropped at the end), builds it with the migrations, makes one
user, account and strategy client, starts both servers with identical gunicorn settings, warms them up,
then fires the same number of signed requests at each from separate load processes over keep-alive
connections, in rounds that alternate between the two servers so that a drift in the box's speed
touches both alike. Every TradeGuard request carries a unique body, so each is a new signal (201); the script
checks the database holds exactly as many signals as were accepted.

It prints accepted requests per second, p50/p99 latency for each, and the ratio TradeGuard / bare.
Goal (issue 2): ratio >= 0.5 and TradeGuard p99 <= 20 ms. With --floor it also measures
bench/floor_app.py, which stores signals without validating them: how far this box lets any endpoint
on TradeGuard's stack go.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from shared.core import extensions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procfs import by_name, cpu_seconds, descendants  # noqa: E402
from shared.core.signing import sign  # noqa: E402


class ThrowawayDatabase:
    """A database of its own on the admin URL's server, for one benchmark run; `drop()` at the end."""

    def __init__(self, admin_url: str):
        self.name = f"tradeguard_bench_{uuid.uuid4().hex[:8]}"
        self._admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        self.url = sa.make_url(admin_url).set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()


def server_env(base: Mapping[str, str], database_url: str) -> dict[str, str]:
    """What the benchmarked servers run with: `base`, on `database_url`, with secrets of their own."""
    from cryptography.fernet import Fernet

    return {
        **base,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "TRADEGUARD_INSTANCE_DIR": tempfile.mkdtemp(prefix="tradeguard-bench-"),
        "TRADEGUARD_SECRET_KEY": "bench",
        "TRADEGUARD_JWT_SECRET": "bench-jwt-secret-long-enough-for-hs256",
        "TRADEGUARD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "LOG_LEVEL": "WARNING",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


def start_gunicorn(
    app_path: str, port: int, env: dict[str, str], args: argparse.Namespace
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        # The web process's own settings (the Procfile's), for every app compared.
        "-c",
        "python:web.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(args.workers),
        "--worker-class",
        args.worker_class,
        "--threads",
        str(args.threads),
        "--keep-alive",
        "30",
        "--log-level",
        "warning",
        app_path,
    ]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    wait_for_port(port)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group; SIGKILL what is left after 20 s, so cleanup always runs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


# --- load generation --------------------------------------------------------------------------------


def signed_signal(client_id: int, secret: str, comment: str) -> tuple[bytes, dict[str, str]]:
    """A new signal's body (made unique by `comment`) and the headers that sign it, as a strategy
    client sends them."""
    body = json.dumps(
        {
            "instrument": "EURUSD",
            "side": "buy",
            "volume": "0.10",
            "price": "1.1000",
            "sl": "1.0950",
            "tp": "1.1100",
            "comment": comment,
        }
    ).encode()
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Client-Id": str(client_id),
        "X-Timestamp": ts,
        "X-Signature": sign(secret, ts, body),
    }
    return body, headers


def _thread_load(port, client_id, secret, count, tag, latencies, statuses, start_event):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start_event.wait()
    for i in range(count):
        body, headers = signed_signal(client_id, secret, f"{tag}-{i}")
        began = time.perf_counter()
        conn.request("POST", "/api/v1/signals", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - began)
        statuses.append(response.status)
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()


def _process_load(port, client_id, secret, per_thread, threads, tag, go, queue):
    latencies: list[float] = []
    statuses: list[int] = []
    start_event = threading.Event()
    workers = [
        threading.Thread(
            target=_thread_load,
            args=(port, client_id, secret, per_thread, f"{tag}-{t}", latencies, statuses, start_event),
        )
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    go.wait()
    start_event.set()
    for w in workers:
        w.join()
    queue.put((latencies, statuses))


@dataclass
class Run:
    """What one burst of requests at one server gave."""

    latencies: list[float]
    statuses: list[int]
    seconds: float
    server_cpu: float
    postgres_cpu: float
    load_cpu: float  # the load generator's own processes


def fire(
    port: int,
    client_id: int,
    secret: str,
    total: int,
    concurrency: int,
    processes: int,
    server_pid: int | None = None,
) -> Run:
    threads = max(1, concurrency // processes)
    per_thread = max(1, total // (threads * processes))
    ctx = mp.get_context("fork")
    go = ctx.Event()
    queue = ctx.Queue()
    tag = uuid.uuid4().hex[:8]
    procs = [
        ctx.Process(
            daemon=True,
            target=_process_load,
            args=(port, client_id, secret, per_thread, threads, f"{tag}-{p}", go, queue),
        )
        for p in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every thread connect and wait at the start line
    server_pids = descendants(server_pid) if server_pid else []
    postgres_pids = by_name("postgres")
    load_pids = [p.pid for p in procs if p.pid is not None]
    server_cpu, postgres_cpu = cpu_seconds(server_pids), cpu_seconds(postgres_pids)
    load_cpu = cpu_seconds(load_pids)
    began = time.perf_counter()
    go.set()
    results = [queue.get() for _ in procs]
    elapsed = time.perf_counter() - began
    server_cpu = cpu_seconds(server_pids) - server_cpu
    postgres_cpu = cpu_seconds(by_name("postgres")) - postgres_cpu
    load_cpu = cpu_seconds(load_pids) - load_cpu
    for p in procs:
        p.join()
    return Run(
        latencies=[x for lat, _ in results for x in lat],
        statuses=[s for _, st in results for s in st],
        seconds=elapsed,
        server_cpu=server_cpu,
        postgres_cpu=postgres_cpu,
        load_cpu=load_cpu,
    )


def accepted(run: Run) -> int:
    return sum(1 for s in run.statuses if s in (200, 201))


def summarize(runs: list[Run]) -> dict[str, float]:
    """Figures over every round of one server: throughput is all accepted over all measured seconds."""
    latencies = sorted(x for run in runs for x in run.latencies)
    sent = sum(len(run.statuses) for run in runs)
    ok = sum(accepted(run) for run in runs)
    return {
        "sent": sent,
        "accepted": ok,
        "rejected": sent - ok,
        "per_second": ok / sum(run.seconds for run in runs),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "server_cpu_ms": sum(run.server_cpu for run in runs) / max(1, sent) * 1000,
        "postgres_cpu_ms": sum(run.postgres_cpu for run in runs) / max(1, sent) * 1000,
        "load_cpu_ms": sum(run.load_cpu for run in runs) / max(1, sent) * 1000,
    }


# --- setup ------------------------------------------------------------------------------------------


def seed(env: dict[str, str]) -> tuple[int, str]:
    """One user, account and strategy client; returns the client's id and secret."""
    os.environ.update(env)
    from flask_migrate import upgrade

    from shared.core.config import load_settings
    from shared.core.db import db
    from shared.identity import accounts, clients, users
    from web import create_app

    app = create_app(load_settings())
    with app.app_context():
        upgrade()
        user = users.register(db.session, "bench@example.com", "benchmark password")
        account = accounts.create_account(
            db.session,
            extensions.secret_box(app),
            user,
            declared_terminals=extensions.declared_terminals(app),
            name="bench",
            terminal_url="sim://",
            login=1001,
            password="x",
            server="sim",
            verify=False,  # ingest is measured, not the terminal (which no process serves here)
        )
        client, secret = clients.create_client(
            db.session, extensions.secret_box(app), user, name="bench", account_id=account.id
        )
        db.session.commit()
        client_id = client.id
        db.engine.dispose()
    return client_id, secret


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="alternating bare/TradeGuard rounds")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure bench/floor_app.py: authentication and the group-committed insert without "
        "validation, the most an endpoint on this stack can reach here",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy record (--gil, with subprocesses) TradeGuard's gunicorn over the measured rounds, "
        "into this file as collapsed stacks (speedscope, flamegraph.pl); needs py-spy in the venv",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()

    database = ThrowawayDatabase(args.admin_url)
    env = server_env(os.environ, database.url)
    servers: list[subprocess.Popen] = []
    try:
        client_id, secret = seed(env)
        names = ["bare Flask", "TradeGuard signals"] + (["floor (no validation)"] if args.floor else [])
        apps = {
            "bare Flask": "bench.bare_app:app",
            "TradeGuard signals": "web.wsgi:app",
            "floor (no validation)": "bench.floor_app:app",
        }
        ports = {name: free_port() for name in names}
        server_of = {}
        for name in names:
            server_of[name] = start_gunicorn(apps[name], ports[name], env, args)
            servers.append(server_of[name])

        warmup = max(200, args.requests // 10)
        warmed = 0  # signals stored by the warm-up of the servers that store them
        for name in names:
            warm = fire(ports[name], client_id, secret, warmup, args.concurrency, args.load_processes)
            warmed += accepted(warm) if name != "bare Flask" else 0

        profiler = None
        if args.profile:
            py_spy = str(Path(sys.executable).parent / "py-spy")
            options = ["--subprocesses", "--gil", "--rate", "500", "--format", "raw"]
            tradeguard_pid = server_of["TradeGuard signals"].pid
            profiler = subprocess.Popen(
                [py_spy, "record", "--pid", str(tradeguard_pid), *options, "--output", str(args.profile)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
        # The box's speed drifts (a shared virtual machine: bare Flask alone has ranged from 1,900 to
        # 5,300 requests/s between runs), so the servers take turns, round after round, and each is
        # measured over all its rounds.
        runs: dict[str, list[Run]] = {name: [] for name in names}
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):
            for name in names:
                runs[name].append(
                    fire(
                        ports[name],
                        client_id,
                        secret,
                        per_round,
                        args.concurrency,
                        args.load_processes,
                        server_of[name].pid,
                    )
                )
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes the profile on SIGINT
            profiler.wait(timeout=60)
        figures = {name: summarize(runs[name]) for name in names}

        engine = sa.create_engine(database.url)
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM signals")).scalar_one()
            audited = conn.execute(
                sa.text("SELECT count(*) FROM audit_log WHERE action = 'signal.received'")
            ).scalar_one()
        engine.dispose()
    finally:
        for server in servers:
            stop(server)
        database.drop()

    print(
        f"ingest benchmark: {os.cpu_count()} CPUs, gunicorn {args.workers} x {args.worker_class} "
        f"({args.threads} threads), {args.concurrency} concurrent clients, {args.requests} requests each "
        f"in {args.rounds} alternating rounds"
    )
    print(
        f"{'endpoint':<22}{'accepted/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'accepted':>9}{'refused':>8}"
        f"{'web CPU ms/req':>16}{'pg CPU ms/req':>15}{'load gen CPU ms/req':>21}"
    )
    for name in names:
        r = figures[name]
        print(
            f"{name:<22}{r['per_second']:>11.0f}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['accepted']:>9}"
            f"{r['rejected']:>8}{r['server_cpu_ms']:>16.3f}{r['postgres_cpu_ms']:>15.3f}"
            f"{r['load_cpu_ms']:>21.3f}"
        )
    bare = figures["bare Flask"]
    for name in names[1:]:
        ratio = figures[name]["per_second"] / bare["per_second"]
        round_ratios = [
            accepted(t) / t.seconds / (accepted(b) / b.seconds)
            for b, t in zip(runs["bare Flask"], runs[name], strict=True)
        ]
        print(
            f"ratio {name} / bare: {ratio:.2f} (rounds {min(round_ratios):.2f} to {max(round_ratios):.2f})"
            f"; p99 {figures[name]['p99_ms']:.2f} ms"
        )
    print("goal (issue 2): TradeGuard signals / bare >= 0.5 and TradeGuard p99 <= 20 ms")
    expected = warmed + sum(figures[name]["accepted"] for name in names[1:])
    print(f"signals stored: {stored} (expected {expected}); signal.received audit rows: {audited}")
    if stored != expected or audited != stored:
        raise SystemExit("stored signals do not match accepted requests")


if __name__ == "__main__":
    main()
