"""GET /api/v1/analytics on Postgres: an account's closed trades, snapshots and recorded slippage seeded
with figures computed by hand (the arithmetic is in the comments), the range's edges, the symbol filter,
the empty account, malformed and reversed ranges, and other users' accounts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.core.config import DEFAULT_MAGIC
from shared.models import GuardState, PositionSnapshot, ReconciliationLog, Side, Trade, TradeState
from tests.conftest import GOOD_SIGNAL
from tests.integration.conftest import BUY

URL = "/api/v1/analytics"
FROM, TO = "2024-03-01T00:00:00Z", "2024-03-04T00:00:00Z"


def at(text):
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Seeder:
    """Rows of one account, written straight to the tables (each trade on a signal approved through
    the API: trades need one)."""

    def __init__(self, api, db_session, world):
        self.api, self.db, self.world = api, db_session, world
        self.count = 0

    def trade(self, symbol, pnl, closed_at, *, filled_at=None, sent_at=None, created_at=None, **columns):
        self.count += 1
        signal = self.api.send_signal(self.world["client"], {**GOOD_SIGNAL, "comment": f"s{self.count}"}).json
        approval = self.api.decide(self.world["user"], signal["id"])
        values = {
            "state": TradeState.CLOSED,
            "pnl": None if pnl is None else Decimal(pnl),
            "closed_at": None if closed_at is None else at(closed_at),
            "filled_at": filled_at and at(filled_at),
            "sent_at": sent_at and at(sent_at),
            "created_at": at(created_at or "2024-01-01T00:00:00"),
            **columns,
        }
        row = Trade(
            signal_id=signal["id"],
            approval_id=approval["id"],
            account_id=signal["account_id"],
            owner_id=self.world["user"]["id"],
            symbol=symbol,
            side=Side.BUY,
            magic=DEFAULT_MAGIC,
            comment=f"TG-a{self.count}-{signal['id']}",
            requested_volume=Decimal("0.10"),
            **values,
        )
        self.db.add(row)
        self.db.flush()
        return row

    def snapshot(self, synced_at, equity, *, low=None, high=None, resolution="sync", account_id=None):
        self.db.add(
            PositionSnapshot(
                account_id=account_id or self.world["account"]["id"],
                currency="USD",
                equity=Decimal(equity),
                balance=Decimal(equity),
                peak_equity=Decimal(equity),
                drawdown_percent=Decimal(0),
                open_positions=0,
                total_lots=Decimal(0),
                synced_at=at(synced_at) if "+" not in synced_at else datetime.fromisoformat(synced_at),
                resolution=resolution,
                equity_min=None if low is None else Decimal(low),
                equity_max=None if high is None else Decimal(high),
            )
        )

    def event(self, created_at, key, symbol, divergences=None, *, event_type="divergence", details=None):
        self.db.add(
            ReconciliationLog(
                account_id=self.world["account"]["id"],
                owner_id=self.world["user"]["id"],
                event_type=event_type,
                position_ticket=1,
                position_key=key,
                symbol=symbol,
                details=details if details is not None else {"divergences": divergences or []},
                created_at=at(created_at),
            )
        )


def slipped(change, pips):
    """A slippage divergence as shared.reconciliation.sync writes it."""
    return {
        "kind": "slippage",
        "change": change,
        "expected": "1.1",
        "actual": "1.1007",
        "difference": pips,
        "unit": "pips",
    }


SL_MOVED = {
    "kind": "sl",
    "change": "moved",
    "expected": "1.09",
    "actual": "1.08",
    "difference": "100.00",
    "unit": "pips",
}
VOLUME = {
    "kind": "volume",
    "change": "less",
    "expected": "0.1",
    "actual": "0.05",
    "difference": "50.00",
    "unit": "percent",
}


@pytest.fixture
def seeded(api, db_session):
    world = api.setup()
    seed = Seeder(api, db_session, world)
    # Trades closed in [1 March, 4 March):
    seed.trade("EURUSD", "30", "2024-03-01T00:00:00", filled_at="2024-02-29T23:59:00")  # at `from`: in; 60 s
    seed.trade(
        "EURUSD", "-10", "2024-03-01T11:02:00", sent_at="2024-03-01T11:00:00"
    )  # not filled: sent; 120 s
    seed.trade(  # filled (not sent) to closed: 3600 s
        "GBPUSD", "20", "2024-03-02T10:00:00", filled_at="2024-03-02T09:00:00", sent_at="2024-03-02T08:00:00"
    )
    seed.trade("GBPUSD", "-5", "2024-03-02T12:00:30", filled_at="2024-03-02T12:00:00")  # 30 s
    seed.trade("EURUSD", "0", "2024-03-03T08:00:01.5", created_at="2024-03-03T08:00:00")  # created: 1.5 s
    # ... and what is left out:
    seed.trade("EURUSD", "1000", "2024-03-04T00:00:00", filled_at="2024-03-03T00:00:00")  # at `to`: out
    seed.trade("EURUSD", "500", "2024-02-29T23:59:59", filled_at="2024-02-29T00:00:00")  # before `from`
    seed.trade("EURUSD", None, None, filled_at="2024-03-01T00:00:00", state=TradeState.FILLED)  # open
    seed.trade("EURUSD", None, "2024-03-02T00:00:00", filled_at="2024-03-01T00:00:00")  # closed, no P&L
    seed.trade(
        "EURUSD", "-700", "2024-03-02T00:00:00", filled_at="2024-03-01T00:00:00", state=TradeState.PARTIAL
    )

    # Equity: the day's last point is its close. 1 March: 1000, 950, 1000 -> 1000; 2 March: a minute
    # bucket (low 980, high 1100, last 1050), then 990 at 23:30 UTC (00:30 on 3 March at UTC+1) -> 990;
    # 3 March: 1019.7.
    seed.snapshot("2024-02-29T12:00:00", "5000")  # before `from`: its 5000 peak would dwarf everything
    seed.snapshot("2024-03-01T10:00:00", "1000")
    seed.snapshot("2024-03-01T20:00:00", "950")
    seed.snapshot("2024-03-01T23:00:00", "1000")
    seed.snapshot("2024-03-02T12:00:00", "1050", low="980", high="1100", resolution="minute")
    seed.snapshot("2024-03-03T00:30:00+01:00", "990")
    seed.snapshot("2024-03-03T18:00:00", "1019.7")
    seed.snapshot("2024-03-04T00:00:00", "1")  # at `to`: out

    # Slippage (pips, adverse +): p1 7 (recorded twice: its SL moved later), p2 -6, p3 10.
    seed.event("2024-03-01T10:00:00", "p1", "EURUSD", [slipped("adverse", "7.00")])
    seed.event("2024-03-01T12:00:00", "p1", "EURUSD", [slipped("adverse", "7.00"), SL_MOVED])
    seed.event("2024-03-02T09:00:00", "p2", "GBPUSD", [slipped("favourable", "6.00")])
    seed.event("2024-03-02T10:00:00", "p3", "EURUSD", [VOLUME, slipped("adverse", "10.00")])
    seed.event("2024-03-02T11:00:00", "p4", "EURUSD", [VOLUME])  # no slippage
    seed.event("2024-03-02T12:00:00", "p5", "EURUSD", details={"fingerprint": "x", "cleared": True})
    # not a divergence event: not read, whatever its details say
    seed.event("2024-03-02T13:00:00", "p6", "EURUSD", [slipped("adverse", "99.00")], event_type="matched")
    seed.event("2024-02-29T10:00:00", "p7", "EURUSD", [slipped("adverse", "50.00")])  # before `from`
    seed.event("2024-03-04T00:00:00", "p8", "EURUSD", [slipped("adverse", "50.00")])  # at `to`: out

    # Another account of the same owner, with a trade and a snapshot in the range: not this account's.
    other = api.account(world["user"])
    other_world = {**world, "account": other, "client": api.strategy_client(world["user"], other["id"])}
    Seeder(api, db_session, other_world).trade(
        "EURUSD", "777", "2024-03-02T00:00:00", filled_at="2024-03-01T00:00:00"
    )
    seed.snapshot("2024-03-02T06:00:00", "1", account_id=other["id"])
    db_session.add(GuardState(account_id=world["account"]["id"], currency="EUR"))
    db_session.commit()
    return world


def get(api, world, **params):
    query = {"account_id": world["account"]["id"], "from": FROM, "to": TO, **params}
    return api.http.get(URL, query_string=query, headers=world["user"]["headers"])


def test_every_figure_of_a_seeded_account(api, seeded):
    response = get(api, seeded)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["account_id"] == seeded["account"]["id"]
    assert body["currency"] == "EUR"  # as the guards last read it from the terminal
    assert (body["from"], body["to"], body["symbol"]) == (
        "2024-03-01T00:00:00+00:00",
        "2024-03-04T00:00:00+00:00",
        None,
    )
    assert body["trades"] == {
        "count": 5,
        "wins": 2,
        "losses": 2,
        "breakeven": 1,
        "net_profit": "35",  # 30 - 10 + 20 - 5 + 0
        "gross_profit": "50",  # 30 + 20
        "gross_loss": "-15",  # -10 - 5
        "win_rate": "0.4",  # 2 / 5
        "win_rate_reason": None,
        "profit_factor": "3.3333",  # 50 / 15
        "profit_factor_reason": None,
        "expectancy": "7",  # 35 / 5
        "expectancy_reason": None,
        "average_win": "25",  # 50 / 2
        "average_win_reason": None,
        "average_loss": "-7.5",  # -15 / 2
        "average_loss_reason": None,
        "largest_win": "30",
        "largest_win_reason": None,
        "largest_loss": "-10",
        "largest_loss_reason": None,
        "average_holding_seconds": "762.3",  # (60 + 120 + 3600 + 30 + 1.5) / 5 = 3811.5 / 5
        "average_holding_seconds_reason": None,
    }
    eurusd, gbpusd = body["by_symbol"]
    assert eurusd["symbol"] == "EURUSD" and gbpusd["symbol"] == "GBPUSD"
    # EURUSD: 30, -10, 0
    assert (eurusd["count"], eurusd["wins"], eurusd["losses"], eurusd["breakeven"]) == (3, 1, 1, 1)
    assert (eurusd["net_profit"], eurusd["profit_factor"], eurusd["win_rate"]) == (
        "20",
        "3",
        "0.3333",
    )  # 30/10; 1/3
    assert (eurusd["expectancy"], eurusd["average_holding_seconds"]) == ("6.6667", "60.5")  # 20/3; 181.5/3
    # GBPUSD: 20, -5
    assert (gbpusd["count"], gbpusd["wins"], gbpusd["losses"], gbpusd["breakeven"]) == (2, 1, 1, 0)
    assert (gbpusd["net_profit"], gbpusd["profit_factor"], gbpusd["win_rate"]) == (
        "15",
        "4",
        "0.5",
    )  # 20/5; 1/2
    assert (gbpusd["expectancy"], gbpusd["average_holding_seconds"]) == ("7.5", "1815")  # 15/2; 3630/2

    assert body["equity"] == {
        "points": 6,
        # peaks use the highs, troughs the lows, as far as their order is known: 1000 -> 950 (50), the
        # bucket's low 980 under 1000 (20), its high 1100 -> its last 1050 (50), 1100 -> 990 (110: the
        # deepest), 1100 -> 1019.7 (80.3). Were the bucket's 1100 -> 980 counted, it would say 120.
        "max_drawdown": "110",
        "max_drawdown_reason": None,
        "max_drawdown_percent": "10",  # 110 / 1100
        "max_drawdown_percent_reason": None,
        # closes 1000, 990, 1019.7: returns -0.01 (990/1000 - 1) and 0.03 (1019.7/990 - 1)
        "daily_returns": 2,
        # mean 0.01; sample sd sqrt((0.02^2 + 0.02^2) / 1) = sqrt(0.0008); 0.01/sqrt(0.0008) * sqrt(252)
        # = sqrt(252 / 8) = 5.61249
        "sharpe": "5.6125",
        "sharpe_reason": None,
        # downside deviation sqrt((0.01^2 + 0) / 2) = sqrt(0.00005); 0.01 / sqrt(0.00005) * sqrt(252)
        # = sqrt(2 * 252) = 22.44994
        "sortino": "22.4499",
        "sortino_reason": None,
    }
    assert body["slippage"] == {
        "unit": "pips",
        "count": 3,  # p1 (once), p2, p3
        "mean": "3.6667",  # (7 - 6 + 10) / 3 = 11 / 3
        "mean_reason": None,
        "p95": "10",  # rank ceil(0.95 * 3) = 3 of -6, 7, 10
        "p95_reason": None,
    }


def test_the_symbol_filter_narrows_trades_breakdown_and_slippage_not_equity(api, seeded):
    whole = get(api, seeded).json
    body = get(api, seeded, symbol="GBPUSD").json
    assert body["symbol"] == "GBPUSD"
    assert [item["symbol"] for item in body["by_symbol"]] == ["GBPUSD"]
    assert body["trades"] == {k: v for k, v in body["by_symbol"][0].items() if k != "symbol"}
    assert (body["trades"]["count"], body["trades"]["net_profit"], body["trades"]["profit_factor"]) == (
        2,
        "15",
        "4",
    )
    assert body["slippage"] == {**whole["slippage"], "count": 1, "mean": "-6", "p95": "-6"}  # p2, favourable
    assert body["equity"] == whole["equity"]  # the account's, whatever the symbol
    eurusd = get(api, seeded, symbol="EURUSD").json["slippage"]
    assert (eurusd["count"], eurusd["mean"], eurusd["p95"]) == (
        2,
        "8.5",
        "10",
    )  # (7 + 10) / 2; rank ceil(1.9) = 2


def test_no_losses_in_a_narrower_range_reports_a_null_profit_factor_with_its_reason(api, seeded):
    # [1 March, 1 March 11:00): only the first trade (+30), and the snapshot of 10:00
    trades = get(api, seeded, to="2024-03-01T11:00:00Z").json["trades"]
    assert (trades["count"], trades["wins"], trades["losses"]) == (1, 1, 0)
    assert (trades["profit_factor"], trades["profit_factor_reason"]) == (None, "no losing trades")
    assert (trades["average_loss"], trades["average_loss_reason"]) == (None, "no losing trades")
    assert (trades["win_rate"], trades["expectancy"]) == ("1", "30")


def test_a_naive_date_time_is_utc_and_an_offset_is_honoured(api, seeded):
    utc = get(api, seeded).json
    naive = get(api, seeded, **{"from": "2024-03-01T00:00:00", "to": "2024-03-04"}).json
    offset = get(api, seeded, **{"from": "2024-03-01T01:00:00+01:00", "to": "2024-03-04T01:00:00+01:00"}).json
    for body in (naive, offset):
        assert {k: body[k] for k in ("trades", "by_symbol", "equity", "slippage")} == {
            k: utc[k] for k in ("trades", "by_symbol", "equity", "slippage")
        }
    assert offset["from"] == "2024-03-01T01:00:00+01:00"
    # one hour later at UTC+0 drops the trade closed at midnight (+30): 4 trades, net 5
    later = get(api, seeded, **{"from": "2024-03-01T01:00:00"}).json["trades"]
    assert (later["count"], later["net_profit"]) == (4, "5")


def test_without_a_range_everything_of_the_account_counts(api, seeded):
    body = api.http.get(
        URL, query_string={"account_id": seeded["account"]["id"]}, headers=seeded["user"]["headers"]
    ).json
    assert (body["from"], body["to"]) == (None, None)
    # + the trades at `to` (1000) and before `from` (500): 7 trades, net 35 + 1500
    assert (body["trades"]["count"], body["trades"]["net_profit"]) == (7, "1535")
    assert body["slippage"]["count"] == 5  # + p7 and p8 (50 each): mean (7 - 6 + 10 + 50 + 50) / 5
    assert body["slippage"]["mean"] == "22.2"
    # + 5000 before and 1 at the end: 5000 -> 1 is the deepest fall
    assert (body["equity"]["points"], body["equity"]["max_drawdown"]) == (8, "4999")


def test_an_account_with_nothing_in_it(api):
    world = api.setup()
    response = api.http.get(
        URL, query_string={"account_id": world["account"]["id"]}, headers=world["user"]["headers"]
    )
    assert response.status_code == 200, response.json
    body = response.json
    assert body["currency"] == "USD"  # the account's, the guards having read nothing
    assert body["by_symbol"] == []
    trades = body["trades"]
    assert (trades["count"], trades["net_profit"], trades["gross_profit"], trades["gross_loss"]) == (
        0,
        "0",
        "0",
        "0",
    )
    for name in ("win_rate", "profit_factor", "expectancy", "average_holding_seconds"):
        assert (trades[name], trades[f"{name}_reason"]) == (None, "no closed trades")
    for name in ("average_win", "largest_win"):
        assert (trades[name], trades[f"{name}_reason"]) == (None, "no winning trades")
    assert body["equity"] == {
        "points": 0,
        "max_drawdown": None,
        "max_drawdown_reason": "no equity snapshots in the range",
        "max_drawdown_percent": None,
        "max_drawdown_percent_reason": "no equity snapshots in the range",
        "daily_returns": 0,
        "sharpe": None,
        "sharpe_reason": "fewer than 2 daily returns",
        "sortino": None,
        "sortino_reason": "fewer than 2 daily returns",
    }
    assert body["slippage"] == {
        "unit": "pips",
        "count": 0,
        "mean": None,
        "mean_reason": "no slippage recorded",
        "p95": None,
        "p95_reason": "no slippage recorded",
    }


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2024-13-01T00:00:00Z"}, "to"),
        ({"from": "0001-01-01T00:00:00-01:00"}, "from"),  # would overflow in UTC
        ({"from": "2024-03-02T00:00:00Z", "to": "2024-03-01T00:00:00Z"}, "to"),  # reversed
        ({"from": "2024-03-01T01:00:00+01:00", "to": "2024-03-01T00:00:00Z"}, "to"),  # the same instant
        ({"account_id": "x"}, "account_id"),
        ({"account_id": None}, "account_id"),  # missing
        ({"symbol": ""}, "symbol"),
    ],
)
def test_a_malformed_or_reversed_query_is_422_naming_the_parameter(api, params, named):
    world = api.setup()
    query = {"account_id": world["account"]["id"], **params}
    response = api.http.get(
        URL, query_string={k: v for k, v in query.items() if v is not None}, headers=world["user"]["headers"]
    )
    assert response.status_code == 422
    assert response.json["error"]["code"] == "validation_error"
    assert list(response.json["error"]["fields"]) == [named]


def test_another_users_account_is_404_like_one_that_does_not_exist(api, seeded):
    stranger = api.user()
    theirs = api.http.get(
        URL, query_string={"account_id": seeded["account"]["id"]}, headers=stranger["headers"]
    )
    missing = api.http.get(URL, query_string={"account_id": 2**31 - 1}, headers=stranger["headers"])
    assert (theirs.status_code, missing.status_code) == (404, 404)
    assert theirs.json["error"]["code"] == "not_found"
    assert theirs.json["error"]["message"] == f"account {seeded['account']['id']} not found"
    assert "trades" not in theirs.json
    assert api.http.get(URL, query_string={"account_id": seeded["account"]["id"]}).status_code == 401


def test_slippage_and_pnl_recorded_by_a_real_sync(api, run, sync, terminal, db_session):
    """The figures read from what reconciliation really writes, not from rows shaped by hand."""
    world = api.setup()  # on login 1001, the simulated terminal's
    signal = api.send_signal(world["client"], BUY).json
    api.decide(world["user"], signal["id"])
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    terminal.sim_set_slippage(80)  # 8 pips on EURUSD, against the buyer: filled at 1.08590
    trade_id = run(signal["id"], deviation_points=200).id
    sync(world["account"]["id"])
    terminal.sim_set_quote("EURUSD", 1.08400, 1.08410)
    trade = db_session.get(Trade, trade_id)
    terminal.sim_close_manual(1001, trade.position_ticket)
    sync(world["account"]["id"])

    query = {
        "account_id": world["account"]["id"],
        "from": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
    }
    body = api.http.get(URL, query_string=query, headers=world["user"]["headers"]).json
    assert body["slippage"] == {
        "unit": "pips",
        "count": 1,
        "mean": "8",
        "mean_reason": None,
        "p95": "8",
        "p95_reason": None,
    }
    # bought 0.10 lot (10,000 EUR) at 1.08590, closed at the bid 1.08400: 10,000 * -0.0019 = -19
    assert (body["trades"]["count"], body["trades"]["losses"], body["trades"]["net_profit"]) == (1, 1, "-19")
    assert (body["trades"]["largest_loss"], body["trades"]["profit_factor_reason"]) == ("-19", None)
    assert body["trades"]["profit_factor"] == "0"  # 0 / 19
    assert body["equity"]["points"] == 2  # a snapshot per sync
