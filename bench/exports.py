"""CSV export benchmark: what exporting a million rows costs the web process, in memory and in time.

    PYTHONPATH=. .venv/bin/python bench/exports.py [--rows 1000000] [--exports trades,reconciliation]
        [--redis-db 8] [--json FILE]

It builds a system of its own and takes it down again (bench.approval.stack: a throw-away Postgres
database built by the Procfile's `release` line, dropped at the end), starts the Procfile's `web` line
with one gunicorn worker (`WEB_CONCURRENCY=1`, so one process serves the export and is the one
measured), registers an owner over the API and seeds `--rows` rows per export for one of the owner's
accounts directly in SQL (INSERT ... SELECT over generate_series: trades with their signals and
approvals, and reconciliation events with a `details` document, some P&L negative, some text that a
spreadsheet would run as a formula).

For each export it then:

- measures the worker's resident memory at rest (after a small export has warmed it up), resets its
  high-water mark (`/proc/PID/clear_refs`), downloads the whole file over HTTP, and prints the peak
  resident memory above rest (goal <= 100 MB) from `VmHWM`, which no sampling can miss;
- prints rows per second over the download (goal >= 50,000/s) and the worker's CPU per row (utime +
  stime over the download), which is steadier than a rate on a shared 2-core box;
- measures, in the same run on the same box, Postgres writing the same rows as CSV itself (`COPY
  (the same query) TO STDOUT WITH CSV`, read by this process): the reference, the fastest a CSV of
  these rows can come out of this database here;
- checks the file: a header, then exactly `--rows` rows of the right width, ids ascending.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.approval import Api, listening, stack, wait_until  # noqa: E402
from bench.procfs import cpu_seconds, descendants, status_kb  # noqa: E402

# The SQL the export runs for these rows (shared.insight.exports), for the COPY reference.
REFERENCE_QUERY = {
    "trades": (
        "SELECT id, account_id, signal_id, approval_id, symbol, side, state, requested_volume,"
        " requested_price, requested_sl, requested_tp, filled_volume, filled_price, magic, comment,"
        " order_ticket, deal_ticket,"
        " position_ticket, attempts, retcode, failure_reason, created_at, sent_at, filled_at, closed_at,"
        " close_reason, close_price, pnl FROM trades WHERE owner_id = {owner} ORDER BY created_at, id"
    ),
    "reconciliation": (
        "SELECT id, account_id, trade_id, event_type, position_ticket, position_key, symbol, side, volume,"
        " price_open, sl, tp, opened_from, close_reason, close_price, pnl, details, created_at"
        " FROM reconciliation_logs WHERE owner_id = {owner} ORDER BY created_at, id"
    ),
}


def seed(
    engine: sa.Engine, owner_id: int, account_id: int, client_id: int, rows: int, which: list[str]
) -> None:
    params = {"owner": owner_id, "account": account_id, "client": client_id, "n": rows}
    with engine.begin() as conn:
        if "trades" in which:
            conn.execute(
                sa.text(
                    """
                    INSERT INTO signals (owner_id, account_id, client_id, instrument, side, volume, price,
                        sl, tp, status, ttl_seconds, expires_at, signature, body_sha256, created_at,
                        decided_at)
                    SELECT :owner, :account, :client, 'EURUSD', 'buy', 0.10, 1.1, 1.09, 1.12, 'approved',
                        60, now(), md5('sig' || g), md5('body' || g),
                        now() - interval '1 year' + g * interval '1 second', now()
                    FROM generate_series(1, :n) AS g
                    """
                ),
                params,
            )
            conn.execute(
                sa.text(
                    """
                    INSERT INTO approvals (signal_id, user_id, decision, created_at)
                    SELECT id, :owner, 'approve', created_at FROM signals WHERE owner_id = :owner
                    """
                ),
                params,
            )
            conn.execute(
                sa.text(
                    """
                    INSERT INTO trades (signal_id, approval_id, account_id, owner_id, symbol, side, state,
                        magic, comment, requested_volume, requested_price, requested_sl, filled_volume,
                        filled_price,
                        order_ticket, deal_ticket, position_ticket, attempts, retcode, failure_reason,
                        created_at, sent_at, filled_at, closed_at, close_reason, close_price, pnl, updated_at)
                    SELECT s.id, a.id, :account, :owner, 'EURUSD', 'buy', 'closed', 20250101,
                        'TG-' || s.id, 0.10, 1.10000, 1.09000, 0.10, 1.10000 + (s.id % 50) * 0.00001,
                        s.id, s.id, s.id, 1, 10009,
                        CASE WHEN s.id % 10 = 0 THEN '=risk ' || s.id ELSE NULL END,
                        s.created_at, s.created_at, s.created_at, s.created_at + interval '1 hour', 'tp',
                        1.10100, CASE WHEN s.id % 3 = 0 THEN -12.5 ELSE 10.0 END, now()
                    FROM signals s JOIN approvals a ON a.signal_id = s.id WHERE s.owner_id = :owner
                    """
                ),
                params,
            )
        if "reconciliation" in which:
            conn.execute(
                sa.text(
                    """
                    INSERT INTO reconciliation_logs (account_id, owner_id, trade_id, event_type,
                        position_ticket, position_key, fingerprint, symbol, side, volume, price_open, sl, tp,
                        opened_from,
                        close_reason, close_price, pnl, details, created_at)
                    SELECT :account, :owner, NULL,
                        CASE WHEN g % 4 = 0 THEN 'divergence' ELSE 'outside' END, g,
                        md5('key' || g), '', 'EURUSD', 'sell', 1.00, 1.10000, 1.09000, 1.12000,
                        CASE WHEN g % 7 = 0 THEN '@mobile' ELSE 'desktop' END, NULL, NULL,
                        CASE WHEN g % 3 = 0 THEN -7.25 ELSE 3.5 END,
                        CASE WHEN g % 4 = 0 THEN jsonb_build_object('slippage_points', g % 9, 'sl',
                            jsonb_build_object('expected', '1.09000', 'actual', '1.08900'))
                            ELSE '{}'::jsonb END,
                        now() - interval '1 year' + g * interval '1 second'
                    FROM generate_series(1, :n) AS g
                    """
                ),
                params,
            )
        conn.execute(sa.text("ANALYZE"))


def worker_pid(master: int) -> int:
    children = [pid for pid in descendants(master) if pid != master]
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker under {master}, found {children}")
    return children[0]


def download(port: int, token: str, path: str) -> tuple[int, int, int, float]:
    """GET the export; (status, bytes, lines, seconds). Read in 256 KB pieces and thrown away, as a
    client saving it would."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    conn.request("GET", f"/api/v1/exports/{path}", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    size = lines = 0
    first = b""
    while piece := response.read(256 * 1024):
        size += len(piece)
        lines += piece.count(b"\n")
        if len(first) < 4096:
            first += piece[:4096]
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {first[:300]!r}")
    return response.status, size, lines, elapsed


def check_file_head(port: int, token: str, path: str, width: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"/api/v1/exports/{path}", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    head = response.read(64 * 1024).decode()
    conn.close()
    rows = list(csv.reader(io.StringIO(head.rsplit("\r\n", 1)[0], newline="")))
    assert all(len(row) == width for row in rows), "a row of the wrong width"
    ids = [int(row[0]) for row in rows[1:]]
    assert ids == sorted(ids), "ids out of order"


def copy_reference(engine: sa.Engine, query: str) -> tuple[int, float]:
    class Sink(io.RawIOBase):
        def __init__(self) -> None:
            self.size = 0

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.size += len(data)
            return len(data)

    sink = Sink()
    raw = engine.raw_connection()
    try:
        started = time.perf_counter()
        with raw.cursor() as cursor:
            cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH CSV HEADER", sink)
        return sink.size, time.perf_counter() - started
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per export")
    parser.add_argument("--exports", default="trades,reconciliation", help="which exports")
    parser.add_argument("--redis-db", type=int, default=8)
    parser.add_argument("--admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args()
    args.env = ["WEB_CONCURRENCY=1"]
    which = [name.strip() for name in args.exports.split(",") if name.strip()]
    load = os.getloadavg()[0]
    print(f"exports benchmark: {os.cpu_count()} CPUs, load average {load:.2f}; {args.rows:,} rows each")
    figures: dict[str, Any] = {}
    with stack(ROOT, args, "exports", "r0") as system:
        system.group.start("web", system.commands["web"], system.env, ROOT)
        wait_until("web", lambda: listening(system.web_port), 60, lambda: system.group.check("web"))
        api = Api(system.web_port)
        email = f"exports-{uuid.uuid4().hex[:6]}@example.com"
        user = api.ok("POST", "/auth/register", {"email": email, "password": "correct horse"})
        api.token = api.ok("POST", "/auth/login", {"email": email, "password": "correct horse"})[
            "access_token"
        ]
        account = api.ok(
            "POST",
            "/accounts",
            {
                "name": "bench",
                "terminal_url": system.terminal_url,
                "login": 5001,
                "password": "p",
                "server": "TradeGuard-Sim",
                "verify": False,
            },
        )
        client = api.ok("POST", "/clients", {"name": "bench", "account_id": account["id"]})
        started = time.perf_counter()
        seed(system.engine, user["id"], account["id"], client["id"], args.rows, which)
        print(f"  seeded {args.rows:,} rows for {', '.join(which)} in {time.perf_counter() - started:.1f} s")
        worker = worker_pid(system.group.pid("web"))
        for name in which:
            path = f"{name}.csv"
            width = REFERENCE_QUERY[name].split(" FROM ")[0].count(",") + 1
            check_file_head(system.web_port, api.token, path, width)
            download(system.web_port, api.token, f"{path}?to=2000-01-01T00:00:00Z")  # warm: header only
            rest_kb = status_kb(worker, "VmRSS") or 0
            Path(f"/proc/{worker}/clear_refs").write_text("5")  # the high-water mark starts again here
            cpu_before = cpu_seconds([worker])
            _, size, lines, seconds = download(system.web_port, api.token, path)
            cpu = cpu_seconds([worker]) - cpu_before
            peak_kb = status_kb(worker, "VmHWM") or 0
            rows = lines - 1
            if rows != args.rows:
                raise RuntimeError(f"{path}: {rows} rows, expected {args.rows}")
            ref_size, ref_seconds = copy_reference(
                system.engine, REFERENCE_QUERY[name].format(owner=user["id"])
            )
            result = {
                "rows": rows,
                "mb": round(size / 1e6, 1),
                "seconds": round(seconds, 2),
                "rows_per_s": round(rows / seconds),
                "worker_cpu_us_per_row": round(cpu / rows * 1e6, 2),
                "rss_rest_mb": round(rest_kb / 1024, 1),
                "rss_peak_above_rest_mb": round((peak_kb - rest_kb) / 1024, 1),
                "copy_reference_rows_per_s": round(rows / ref_seconds),
                "copy_reference_mb": round(ref_size / 1e6, 1),
            }
            figures[name] = result
            print(
                f"  {path:20} {rows:,} rows, {result['mb']} MB in {seconds:.2f} s:"
                f" {result['rows_per_s']:,} rows/s (goal >= 50,000),"
                f" worker CPU {result['worker_cpu_us_per_row']} us/row;"
                f" RSS at rest {result['rss_rest_mb']} MB,"
                f" peak +{result['rss_peak_above_rest_mb']} MB (goal <= 100)"
            )
            print(
                f"  {'':20} reference, Postgres' own COPY ... CSV of the same rows: "
                f"{result['copy_reference_rows_per_s']:,} rows/s ({result['copy_reference_mb']} MB)"
            )
        api.close()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
