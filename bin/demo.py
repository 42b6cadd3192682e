"""The whole system in one command (`./bin/demo`): a strategy sends signed signals, an owner approves some
and rejects one, a stop loss is moved and a position opened by hand on the terminal, and the price falls until
the guard warns, waits out its grace period and closes everything. One line per step as it goes, then a
summary and where to look.

Uses the system on http://127.0.0.1:$PORT when one answers there; otherwise starts one (`./bin/run`,
the embedded defaults) and stops it at the end: on Ctrl-C, or at once with `--exit` (tests).
Talks to it as its users would: the JSON API over HTTP, signals signed like a strategy client's, and the
simulated terminal's own controls (`sim_*`, the terminal process on $TRADEGUARD_TERMINAL_PORT) to move
the market and open the position by hand.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.core.signing import sign  # noqa: E402
from shared.mt5.sim.client import connect  # noqa: E402

PORT = int(os.environ.get("PORT", "5000"))
TERMINAL_PORT = int(os.environ.get("TRADEGUARD_TERMINAL_PORT", "18812"))
FLOWER_PORT = int(os.environ.get("FLOWER_PORT", "5555"))
BID, ASK = 1.08500, 1.08510
PIP = 0.0001
# The simulated terminal takes any password for an account it has not seen: this one is the demo's.
TERMINAL_PASSWORD = "demo"  # noqa: S105
# Warn at 1 %, close at 2 % of the peak equity; 5 s of grace; two readings in a row confirm a breach.
RISK = {
    "grace_seconds": 5,
    "confirmations": 2,
    "drawdown_limits": [
        {
            "name": "max drawdown",
            "period": "lifetime",
            "reference": "peak_equity",
            "warn_percent": 1,
            "max_percent": 2,
            "action": "close",
            "resume": "manual",
        }
    ],
}


def step(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


class Api:
    def __init__(self, port: int) -> None:
        self.port = port
        self.token: str | None = None

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.token and "X-Client-Id" not in sent:
            sent["Authorization"] = f"Bearer {self.token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=raw, headers=sent)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        answer = json.loads(data) if data else None
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {answer}")
        return answer


def ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/readyz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def wait_for(what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")


def instance_dir() -> Path:
    return Path(os.environ.get("TRADEGUARD_INSTANCE_DIR") or ROOT / "instance")


def start_system() -> subprocess.Popen[bytes]:
    instance_dir().mkdir(parents=True, exist_ok=True)
    log = open(instance_dir() / "demo-system.log", "ab")  # noqa: SIM115 - the child's, kept open for it
    return subprocess.Popen(  # noqa: S603 - our own bin/run, no input in it
        [str(ROOT / "bin" / "run")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_system(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def send_signal(api: Api, client: dict[str, Any], body: dict[str, Any]) -> int:
    raw = json.dumps(body).encode()
    timestamp = str(int(time.time()))
    headers = {
        "X-Client-Id": str(client["id"]),
        "X-Timestamp": timestamp,
        "X-Signature": sign(client["secret"], timestamp, raw),
    }
    return int(api.call("POST", "/api/v1/signals", raw, headers)["id"])


def run_demo(api: Api) -> dict[str, Any]:
    mt5 = connect("127.0.0.1", TERMINAL_PORT)
    mt5.sim_set_quote("EURUSD", BID, ASK)

    email = f"demo-{uuid.uuid4().hex[:6]}@example.com"
    password = secrets.token_urlsafe(12)
    api.call("POST", "/api/v1/auth/register", {"email": email, "password": password})
    api.token = api.call("POST", "/api/v1/auth/login", {"email": email, "password": password})["access_token"]
    login = 20_000 + secrets.randbelow(70_000)
    account = api.call(
        "POST",
        "/api/v1/accounts",
        {
            "name": "Demo account",
            "terminal_url": f"sim://127.0.0.1:{TERMINAL_PORT}",
            "login": login,
            "password": TERMINAL_PASSWORD,
            "server": "TradeGuard-Sim",
        },
    )
    account_id = account["id"]
    step(f"owner {email} with account {account_id} (MT5 login {login}) on the simulated terminal")
    document = api.call("GET", f"/api/v1/accounts/{account_id}/risk")  # the whole document: the defaults
    api.call("PUT", f"/api/v1/accounts/{account_id}/risk", {**document, **RISK})
    step("risk settings: warn at 1 %, close at 2 % drawdown from the peak, 5 s of grace")
    client = api.call("POST", "/api/v1/clients", {"name": "demo strategy", "account_id": account_id})
    step(f"strategy client {client['id']} created (its secret signs every signal)")

    signals = [
        send_signal(api, client, {"instrument": "EURUSD", "side": "buy", "volume": "1.00", "sl": "1.07000"}),
        send_signal(api, client, {"instrument": "EURUSD", "side": "buy", "volume": "0.50", "comment": "add"}),
        send_signal(api, client, {"instrument": "GBPUSD", "side": "sell", "volume": "0.20"}),
    ]
    step(f"3 signed signals sent: {signals}")

    api.call("POST", "/api/v1/approvals", {"signal_id": signals[0], "decision": "approve"})
    first = wait_for("the first trade to fill", lambda: filled(api, account_id, 1), 60)[0]
    step(f"signal 1 approved: 1.00 lot EURUSD bought at {first['filled_price']}, stop loss 1.07")
    api.call("POST", "/api/v1/approvals", {"signal_id": signals[1], "decision": "approve"})
    wait_for("the second trade to fill", lambda: filled(api, account_id, 2), 60)
    step("signal 2 approved: 0.50 lot EURUSD bought")
    api.call(
        "POST", "/api/v1/approvals", {"signal_id": signals[2], "decision": "reject", "reason": "no GBP today"}
    )
    step("signal 3 rejected: no GBP today")

    # Someone moves the first position's stop loss by hand, on the terminal: reconciliation flags it.
    if not mt5.initialize(login=login, password=TERMINAL_PASSWORD, server="TradeGuard-Sim"):
        raise RuntimeError(f"could not log in to the terminal as {login}: {mt5.last_error()}")
    moved = mt5.order_send(
        {
            "action": mt5.TRADE_ACTION_SLTP,
            "symbol": "EURUSD",
            "position": first["position_ticket"],
            "sl": 1.08,
            "tp": 0.0,
        }
    )
    step(
        f"the stop loss of position {first['position_ticket']} moved by hand to 1.08"
        f" (retcode {moved.retcode})"
    )
    ticket = mt5.sim_open_manual(login, "EURUSD", mt5.ORDER_TYPE_BUY, 0.50)
    step(f"0.50 lot EURUSD bought by hand on the terminal (position {ticket}), outside TradeGuard")
    events = wait_for(
        "reconciliation to see the moved stop loss and the position opened by hand",
        lambda: seen(api, account_id, {"divergence", "outside_position"}),
        60,
    )
    step(f"reconciliation: {dict(Counter(event['event_type'] for event in events))}")

    # 2 lots of EURUSD: 20 USD a pip on the 10,000 USD account (and the spread already lost).
    mt5.sim_set_quote("EURUSD", BID - 6 * PIP, ASK - 6 * PIP)
    wait_for("the guard's warning", lambda: guard_state(api, account_id) in ("warning", "alert"), 60)
    step("price down 6 pips: the guard warns (drawdown past 1 %)")
    mt5.sim_set_quote("EURUSD", BID - 12 * PIP, ASK - 12 * PIP)
    alert = wait_for("the alert", lambda: live_alert(api, account_id), 60)
    step(f"price down 12 pips: alert {alert['id']} pending, the positions close at {alert['close_at']}")
    done = wait_for("the alert to be carried out", lambda: finished_alert(api, alert["id"]), 60)
    step(f"alert {done['id']} {done['status']}: {done['positions_closed_count']} position(s) closed")
    mt5.sim_set_quote("EURUSD", BID, ASK)
    return {"email": email, "password": password, "account_id": account_id, "alert": done}


def filled(api: Api, account_id: int, count: int) -> list[dict[str, Any]] | None:
    """The account's filled trades, oldest first, once there are `count` of them."""
    trades = api.call("GET", f"/api/v1/trades?account_id={account_id}&per_page=100")["items"]
    failed = [t for t in trades if t["state"] in ("rejected", "failed")]
    if failed:
        raise RuntimeError(f"a trade did not fill: {failed}")
    done = sorted((t for t in trades if t["state"] in ("filled", "partial")), key=lambda t: t["id"])
    return done if len(done) >= count else None


def seen(api: Api, account_id: int, kinds: set[str]) -> list[dict[str, Any]] | None:
    events = api.call("GET", f"/api/v1/reconciliation/{account_id}?per_page=100")["items"]
    return events if kinds <= {event["event_type"] for event in events} else None


def guard_state(api: Api, account_id: int) -> str | None:
    for account in api.call("GET", "/api/v1/guards"):
        if account["account_id"] == account_id:
            return str(account["state"])
    return None


def live_alert(api: Api, account_id: int) -> dict[str, Any] | None:
    alerts = api.call("GET", f"/api/v1/alerts?account_id={account_id}")["items"]
    return alerts[0] if alerts else None


def finished_alert(api: Api, alert_id: int) -> dict[str, Any] | None:
    alert = api.call("GET", f"/api/v1/alerts/{alert_id}")
    return alert if alert["status"] in ("executed", "cancelled", "failed") else None


def summary(api: Api, result: dict[str, Any]) -> None:
    account_id = result["account_id"]
    trades = api.call("GET", f"/api/v1/trades?account_id={account_id}&per_page=100")["items"]
    events = api.call("GET", f"/api/v1/reconciliation/{account_id}?per_page=100")["items"]
    alert = result["alert"]
    print("\nSummary")
    print(f"  trades: {len(trades)}")
    for trade in sorted(trades, key=lambda t: t["id"]):
        print(
            f"    #{trade['id']} {trade['side']} {trade['filled_volume'] or trade['requested_volume']} "
            f"{trade['symbol']} at {trade['filled_price']}: {trade['state']}"
            + (
                f", closed by {trade['close_reason']} at {trade['close_price']}, P&L {trade['pnl']}"
                if trade["closed_at"]
                else ""
            )
        )
    divergences = [e for e in events if e["event_type"] == "divergence"]
    print(f"  reconciliation events: {dict(Counter(e['event_type'] for e in events))}")
    for event in divergences:
        print(f"    divergence on position {event['position_ticket']}: {json.dumps(event['details'])}")
    print(
        f"  alert #{alert['id']} ({alert['alert_type']}, {alert['reason']}): {alert['status']}, "
        f"{alert['positions_closed_count']} position(s) closed, total loss {alert['total_loss']}"
    )
    for close in alert.get("closes", []):
        print(
            f"    position {close['position_ticket']} {close['symbol']}: {close['state']} at "
            f"{close['close_price']}, P&L {close['pnl']}"
        )
    base = f"http://127.0.0.1:{api.port}"
    print("\nWhere to look")
    print(f"  the owner's page:  {base}/   (sign in as {result['email']} / {result['password']})")
    print(f"  the equity chart:  {base}/api/v1/charts/equity.png?account_id={account_id} (bearer token)")
    print(f"  the API document:  {base}/api/openapi.json   (interactive: {base}/api/docs)")
    print(
        f"  Flower:            http://127.0.0.1:{FLOWER_PORT}"
        "   (its password: .venv/bin/python -m workers.flower --print-auth)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exit", action="store_true", help="stop what the demo started once it is done")
    args = parser.parse_args()
    api = Api(PORT)
    started: subprocess.Popen[bytes] | None = None
    try:
        if ready(PORT):
            step(f"using the system already running on port {PORT}")
        else:
            step(
                f"starting the system (./bin/run, its log in {instance_dir() / 'demo-system.log'})"
                f" on port {PORT}"
            )
            started = start_system()
            wait_for("the system to start", lambda: ready(PORT) or started.poll() is not None, 180)
            if started.poll() is not None:
                raise RuntimeError(f"the system did not start: see {instance_dir() / 'demo-system.log'}")
            step("the system is up")
        result = run_demo(api)
        summary(api, result)
        if started is not None and not args.exit:
            print(
                "\nThe system keeps running for you to look around; Ctrl-C stops everything the demo started."
            )
            started.wait()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if started is not None:
            step("stopping what the demo started")
            stop_system(started)


if __name__ == "__main__":
    sys.exit(main())
