"""What the guards' own work costs the guards process, in CPU per unit, against a throw-away Postgres
database: steadier than bench/guards.py's end-to-end figures, which move with whatever else the 2-core
box is doing when the breach falls (a reconciliation burst, most often).

    PYTHONPATH=. .venv/bin/python bench/guard_costs.py [--accounts 1000] [--closes 150] [--repeat 15]
        [--reference REV] [--rounds 2]

Measured, in this process (`time.process_time`: this process's CPU, not Postgres's; and the wall time):

- the watch's view of every account (`shared.guards.watch._watched`, what each tick starts with):
  - a tick with nothing changed since the last;
  - a tick after every account was synced (its sync timestamp and equity moved; a reconciliation
    burst touches every account within two seconds);
  - a tick after every account was read by its guards (its guard state moved);
- recording a close run's closes (`engine.write_closes`, then `engine.closed_many` once they filled),
  `--closes` closes over `--closes / 3` alerts, as a run of bench/guards.py's crowd has them.

Each figure is the median of `--repeat` runs. With `--reference REV` the same measurements are also made
on the tree at REV (extracted as bench/approval.py does), alternating with this tree's for `--rounds`
rounds, each in a fresh process with its own database, so that both meet the same box.

The accounts: `--accounts` users and accounts (bench.fanout's seeding), each with a sync (3 positions),
a guard state (one limit read) and risk settings (one close limit), as bench/guards.py has them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
# The tree measured: this one, or (in the process `--reference` starts) the reference's.
sys.path.insert(0, os.environ.get("TRADEGUARD_BENCH_TREE", str(ROOT)))

ADMIN_URL = os.environ.get("TRADEGUARD_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def measure(run: Callable[[], Any], prepare: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Median CPU and wall milliseconds of `run`, each run after its own `prepare` (not measured)."""
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(repeat):
        prepare()
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        run()
        cpu.append((time.process_time() - cpu_start) * 1000)
        wall.append((time.perf_counter() - wall_start) * 1000)
    return {"cpu_ms": round(statistics.median(cpu), 2), "wall_ms": round(statistics.median(wall), 2)}


def seed(database_url: str, encryption_key: str, count: int) -> list[int]:
    """Accounts as bench/guards.py has them once synced and read: returns their ids."""
    from bench.fanout import seed_database
    from shared.guards.settings import default_settings, validate_settings

    seed_database(
        database_url,
        encryption_key,
        [(i, 700000 + i, "sim://127.0.0.1:1") for i in range(count)],
        {},
        0,
        0,
    )
    document = default_settings()
    document["drawdown_limits"] = [
        {
            "name": "max drawdown",
            "period": "lifetime",
            "reference": "peak_equity",
            "warn_percent": None,
            "max_percent": 2,
            "max_amount": None,
            "action": "close",
            "resume": "manual",
        }
    ]
    settings = validate_settings(document)
    now = datetime.now(UTC)
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            ids = list(conn.execute(sa.text("SELECT id FROM accounts ORDER BY id")).scalars())
            positions = [
                {
                    "ticket": 1000 + n,
                    "identifier": 1000 + n,
                    "position_key": f"k{n}",
                    "symbol": symbol,
                    "side": "buy",
                    "volume": "0.01",
                    "price_open": "1.08500",
                    "price_current": "1.08500",
                    "sl": None,
                    "tp": None,
                    "profit": "0.00",
                    "magic": 0,
                    "comment": "",
                    "opened_at": now.isoformat(),
                    "trade_id": None,
                }
                for n, symbol in enumerate(("EURUSD", "USDJPY", "AUDUSD"))
            ]
            conn.execute(
                sa.text(
                    "INSERT INTO account_sync (account_id, last_synced_at, consecutive_failures,"
                    " breaker_openings, equity, balance, margin, positions)"
                    " VALUES (:a, :at, 0, 0, 10000, 10000, 10, CAST(:p AS jsonb))"
                ),
                [{"a": a, "at": now, "p": json.dumps(positions)} for a in ids],
            )
            limits = json.dumps({"max drawdown": {"reference": "10000", "warned": False}})
            conn.execute(
                sa.text(
                    "INSERT INTO guard_states (account_id, state, limits, margin_streak, blocked_symbols,"
                    " broker_offset_seconds, updated_at) VALUES (:a, 'ok', CAST(:l AS jsonb), 0,"
                    " CAST('{}' AS jsonb), 0, :at)"
                ),
                [{"a": a, "l": limits, "at": now} for a in ids],
            )
            conn.execute(
                sa.text(
                    "INSERT INTO account_risk (account_id, settings, updated_at)"
                    " VALUES (:a, CAST(:s AS jsonb), :at)"
                ),
                [{"a": a, "s": json.dumps(settings), "at": now} for a in ids],
            )
    finally:
        engine.dispose()
    return ids


def measure_here(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement on this tree, in a database of its own."""
    from cryptography.fernet import Fernet

    from bench.fanout import migrate
    from bench.ingest import ThrowawayDatabase

    database = ThrowawayDatabase(str(sa.make_url(ADMIN_URL).set(drivername="postgresql+psycopg2")))
    key = Fernet.generate_key().decode()
    env = {
        "DATABASE_URL": database.url,
        "TRADEGUARD_ENCRYPTION_KEY": key,
        "TRADEGUARD_SECRET_KEY": "bench",
        "TRADEGUARD_JWT_SECRET": "bench-jwt-secret-that-is-long-enough-for-hs256",
        "TRADEGUARD_INSTANCE_DIR": tempfile.mkdtemp(prefix="tg-costs-"),
        "REDIS_URL": "",
    }
    try:
        migrate(env)
        ids = seed(database.url, key, args.accounts)
        return _measure(ids, args)
    finally:
        database.drop()


def _measure(ids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    from shared.core.config import load_settings
    from shared.core.db import db
    from shared.guards import engine as guards_engine
    from shared.guards import watch
    from shared.models import AlertClose
    from web import create_app

    app = create_app(load_settings())
    figures: dict[str, Any] = {}
    with app.app_context():
        session = db.session

        def touch(statement: str) -> Callable[[], None]:
            def prepare() -> None:
                session.execute(sa.text(statement))
                session.commit()

            return prepare

        watch._watched(session)  # the first tick builds every view
        session.commit()
        figures["tick, nothing changed"] = measure(
            lambda: watch._watched(session), session.commit, args.repeat
        )
        figures["tick after every account's sync"] = measure(
            lambda: watch._watched(session),
            touch(
                "UPDATE account_sync SET equity = equity + 0.01,"
                " last_synced_at = last_synced_at + interval '1 second'"
            ),
            args.repeat,
        )
        figures["tick after every account's reading"] = measure(
            lambda: watch._watched(session),
            touch("UPDATE guard_states SET updated_at = updated_at + interval '1 second'"),
            args.repeat,
        )

        per_alert = 3
        alerts = max(1, args.closes // per_alert)
        accounts = ids[:alerts]
        state: dict[str, Any] = {}

        def new_run() -> None:
            session.rollback()
            session.execute(sa.text("DELETE FROM alert_closes"))
            session.execute(sa.text("DELETE FROM drawdown_alerts"))
            now = datetime.now(UTC)
            alert_ids = list(
                session.execute(
                    sa.text(
                        "INSERT INTO drawdown_alerts (account_id, owner_id, alert_type, limit_name, reason,"
                        " currency, equity, positions_closed_count, total_loss, status, close_at,"
                        " created_at, details) SELECT a.id, a.owner_id, 'drawdown', 'max drawdown',"
                        " 'bench', 'USD', 9700, 0, 0, 'closing', :at, :at, CAST('{}' AS jsonb)"
                        " FROM accounts a WHERE a.id = ANY(:ids) ORDER BY a.id RETURNING id, account_id"
                    ),
                    {"at": now, "ids": accounts},
                ).all()
            )
            state["alert_ids"] = [alert_id for alert_id, _ in alert_ids]
            state["rows"] = [
                {
                    "alert_id": alert_id,
                    "account_id": account_id,
                    "trade_id": None,
                    "position_ticket": 1000 + n,
                    "position_key": f"k{n}",
                    "symbol": "GBPUSD",
                    "side": "buy",
                    "volume": Decimal("0.30"),
                    "state": "pending",
                    "attempts": 0,
                    "created_at": now - timedelta(seconds=1),
                }
                for alert_id, account_id in alert_ids
                for n in range(per_alert)
            ]

        def write() -> None:
            guards_engine.write_closes(session, state["rows"], state["alert_ids"])

        figures[f"writing {alerts * per_alert} closes"] = measure(write, new_run, args.repeat)

        def filled_run() -> None:
            new_run()
            write()
            session.execute(sa.update(AlertClose).values(state="sent"))
            state["filled"] = [
                guards_engine.Filled(row, Decimal("1.25010"), Decimal("-9.30"), 5000 + row.id)
                for row in session.scalars(sa.select(AlertClose).order_by(AlertClose.id))
            ]

        def record() -> None:
            guards_engine.closed_many(
                session, state["filled"], lambda row: lambda *a, **k: None, lambda: datetime.now(UTC)
            )

        figures[f"recording {alerts * per_alert} filled closes"] = measure(record, filled_run, args.repeat)
        recorded = session.execute(
            sa.text("SELECT count(*) FROM alert_closes WHERE state = 'closed' AND pnl = -9.30")
        ).scalar_one()
        session.rollback()
        figures["check: closes recorded with their figures"] = recorded
        db.engine.dispose()
    return figures


def run_tree(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    """This script, measuring `tree` in a fresh process; its figures."""
    command = [
        sys.executable,
        str(ROOT / "bench" / "guard_costs.py"),
        "--here",
        "--accounts",
        str(args.accounts),
        "--closes",
        str(args.closes),
        "--repeat",
        str(args.repeat),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree), "TRADEGUARD_BENCH_TREE": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--closes", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--reference", metavar="REV", help="also measure the tree at this git revision")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds with --reference")
    parser.add_argument("--here", action="store_true", help=argparse.SUPPRESS)  # one tree, JSON out
    args = parser.parse_args()

    if args.here:
        print(json.dumps(measure_here(args)))
        return

    from bench.approval import extract

    trees = {"this tree": ROOT}
    if args.reference:
        trees = {args.reference: extract(args.reference), "this tree": ROOT}
    print(
        f"guard costs: {args.accounts} accounts, {args.closes} closes, median of {args.repeat};"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(args.rounds if args.reference else 1):
        for name, tree in trees.items():
            results[name].append(run_tree(tree, args))
    for name, runs in results.items():
        print(f"  {name}:")
        for measurement in runs[0]:
            values = [run[measurement] for run in runs]
            if isinstance(values[0], dict):
                cpu = " / ".join(f"{v['cpu_ms']:.1f}" for v in values)
                wall = " / ".join(f"{v['wall_ms']:.1f}" for v in values)
                print(f"    {measurement:<42} CPU {cpu} ms   wall {wall} ms")
            else:
                print(f"    {measurement:<42} {' / '.join(str(v) for v in values)}")


if __name__ == "__main__":
    main()
