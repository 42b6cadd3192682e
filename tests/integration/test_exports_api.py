"""GET /api/v1/exports/trades.csv and reconciliation.csv: the caller's rows, the same as the JSON API
gives them, cell for cell; streamed; filtered by account and time; bad parameters named."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from shared.core.config import DEFAULT_MAGIC
from shared.insight import exports
from shared.models import ReconciliationLog, Side, Signal, Trade, TradeState
from tests.conftest import GOOD_SIGNAL

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _trade(api: Any, db_session: Any, world: dict[str, Any], account_id: int, **values: Any) -> Trade:
    # Each signal its own body: the same body signed in the same second is a replay.
    response = api.send_signal(world["client"], {**GOOD_SIGNAL, "comment": uuid.uuid4().hex})
    signal_id = response.json["id"]
    approval = api.decide(world["user"], signal_id)
    signal = db_session.get(Signal, signal_id)
    trade = Trade(
        signal_id=signal.id,
        approval_id=approval["id"],
        account_id=account_id,
        owner_id=signal.owner_id,
        symbol="EURUSD",
        side=Side.BUY,
        magic=DEFAULT_MAGIC,
        requested_volume=Decimal("0.10"),
        **values,
    )
    db_session.add(trade)
    db_session.flush()
    return trade


@pytest.fixture
def world(api: Any, db_session: Any) -> dict[str, Any]:
    world = api.setup()
    account_id = world["account"]["id"]
    world["other_account"] = api.account(world["user"])
    world["trades"] = [
        _trade(
            api,
            db_session,
            world,
            account_id,
            state=TradeState.CLOSED,
            comment="TG-a1",
            requested_price=Decimal("1.10000"),
            requested_sl=Decimal("1.09000"),
            filled_volume=Decimal("0.10"),
            filled_price=Decimal("1.10020"),
            order_ticket=501,
            deal_ticket=601,
            position_ticket=701,
            attempts=1,
            retcode=10009,
            created_at=T0,
            sent_at=T0 + timedelta(seconds=1),
            filled_at=T0 + timedelta(seconds=1, microseconds=250000),
            closed_at=T0 + timedelta(hours=2),
            close_reason="guard",
            close_price=Decimal("1.09500"),
            pnl=Decimal("-52.0000"),
        ),
        _trade(
            api,
            db_session,
            world,
            account_id,
            state=TradeState.REJECTED,
            comment='=HYPERLINK("http://evil")',
            failure_reason="@risk 3.1% of equity > 2%",
            retcode=10019,
            attempts=1,
            created_at=T0 + timedelta(days=1),
        ),
        _trade(
            api,
            db_session,
            world,
            world["other_account"]["id"],
            state=TradeState.FILLED,
            comment="TG-b1",
            filled_volume=Decimal("0.05"),
            filled_price=Decimal("1.20000"),
            created_at=T0 + timedelta(days=2),
        ),
    ]
    # Someone else's trade: never in this caller's file.
    stranger = api.setup()
    world["stranger"] = stranger
    _trade(api, db_session, stranger, stranger["account"]["id"], state=TradeState.PENDING, created_at=T0)
    db_session.commit()
    return world


def _rows(response: Any) -> tuple[list[str], list[dict[str, str]]]:
    assert response.status_code == 200, response.data
    assert response.mimetype == "text/csv"
    reader = csv.reader(io.StringIO(response.get_data(as_text=True), newline=""))
    header, *rows = list(reader)
    return header, [dict(zip(header, row, strict=True)) for row in rows]


def _expected_cell(value: Any, column: exports.Column) -> Any:
    """What the CSV's cell must be, given the JSON API's value for the same field."""
    if value is None:
        return ""
    if column.kind == "decimal":
        return Decimal(value)  # compared as numbers: the JSON drops trailing zeros, the file keeps them
    if column.kind == "time":
        return datetime.fromisoformat(value)
    if column.kind == "text" and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return str(value) if not isinstance(value, dict) else value


def _parsed_cell(text: str, column: exports.Column) -> Any:
    if text == "" or column.kind not in ("decimal", "time", "json"):
        return text
    if column.kind == "decimal":
        return Decimal(text)
    if column.kind == "time":
        assert text.endswith("Z"), text
        return datetime.fromisoformat(text)
    import json

    return json.loads(text)


def _same_as_json(export: exports.Export, csv_row: dict[str, str], item: dict[str, Any]) -> None:
    for column in export.columns:
        assert _parsed_cell(csv_row[column.header], column) == _expected_cell(item[column.header], column), (
            column.header
        )


def test_trades_csv_matches_the_json_api_row_by_row(api, world):
    headers = world["user"]["headers"]
    header, rows = _rows(api.http.get("/api/v1/exports/trades.csv", headers=headers))
    assert header == [column.header for column in exports.TRADES.columns]
    listing = api.http.get("/api/v1/trades?per_page=100", headers=headers).json
    by_id = {item["id"]: item for item in listing["items"]}
    # Every own trade once, oldest first, none of the stranger's.
    assert [int(row["id"]) for row in rows] == [trade.id for trade in world["trades"]]
    assert sorted(by_id) == sorted(int(row["id"]) for row in rows)
    for row in rows:
        _same_as_json(exports.TRADES, row, by_id[int(row["id"])])
    first, rejected, _ = rows
    # As stored, in the file's own text: the scale kept, the loss a plain negative number, UTC with Z.
    assert (first["pnl"], first["filled_price"], first["requested_volume"]) == (
        "-52.0000",
        "1.1002000000",
        "0.1000",
    )
    assert first["filled_at"] == "2026-11-02T09:00:01.250000Z"
    assert (first["side"], first["state"], first["close_reason"]) == ("buy", "closed", "guard")
    # Text a spreadsheet would run is escaped.
    assert rejected["comment"] == '\'=HYPERLINK("http://evil")'
    assert rejected["failure_reason"] == "'@risk 3.1% of equity > 2%"
    assert rejected["filled_price"] == "" and rejected["closed_at"] == ""


def test_trades_csv_filters_by_account_and_time(api, world):
    headers = world["user"]["headers"]
    first, second, third = world["trades"]
    _, rows = _rows(
        api.http.get(f"/api/v1/exports/trades.csv?account_id={world['other_account']['id']}", headers=headers)
    )
    assert [int(row["id"]) for row in rows] == [third.id]
    # from inclusive, to exclusive; an offset-less time is UTC.
    _, rows = _rows(
        api.http.get(
            "/api/v1/exports/trades.csv?from=2026-11-02T09:00:00&to=2026-11-03T09:00:00%2B00:00",
            headers=headers,
        )
    )
    assert [int(row["id"]) for row in rows] == [first.id]
    _, rows = _rows(
        api.http.get("/api/v1/exports/trades.csv?from=2026-11-03T10:00:00%2B01:00", headers=headers)
    )
    assert [int(row["id"]) for row in rows] == [second.id, third.id]
    header, rows = _rows(
        api.http.get("/api/v1/exports/trades.csv?from=2030-01-01T00:00:00Z", headers=headers)
    )
    assert rows == [] and header[0] == "id"  # nothing in range: the header alone


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("from=2026-11-03T00:00:00Z&to=2026-11-02T00:00:00Z", "to"),
        ("from=2026-11-03T00:00:00Z&to=2026-11-03T00:00:00Z", "to"),
        ("account_id=abc", "account_id"),
    ],
)
@pytest.mark.parametrize("name", ["trades.csv", "reconciliation.csv"])
def test_bad_parameters_are_422_naming_them(api, world, name, query, field):
    response = api.http.get(f"/api/v1/exports/{name}?{query}", headers=world["user"]["headers"])
    assert response.status_code == 422
    assert field in response.json["error"]["fields"], response.json


@pytest.mark.parametrize("name", ["trades.csv", "reconciliation.csv"])
def test_another_users_account_is_not_found_and_anonymous_is_refused(api, world, name):
    stranger_account = world["stranger"]["account"]["id"]
    response = api.http.get(
        f"/api/v1/exports/{name}?account_id={stranger_account}", headers=world["user"]["headers"]
    )
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    assert api.http.get(f"/api/v1/exports/{name}").status_code == 401


def _event(world: dict[str, Any], account_id: int, at: datetime, **values: Any) -> ReconciliationLog:
    return ReconciliationLog(
        account_id=account_id,
        owner_id=world["user"]["id"],
        position_ticket=values.pop("position_ticket", 701),
        position_key=values.pop("position_key", f"key-{at.timestamp()}"),
        symbol="EURUSD",
        created_at=at,
        **values,
    )


def test_reconciliation_csv_matches_the_json_api_row_by_row(api, world, db_session):
    account_id = world["account"]["id"]
    trade = world["trades"][0]
    events = [
        _event(
            world,
            account_id,
            T0,
            event_type="matched",
            trade_id=trade.id,
            side="buy",
            volume=Decimal("0.10"),
            price_open=Decimal("1.10020"),
        ),
        _event(
            world,
            account_id,
            T0 + timedelta(minutes=1),
            event_type="divergence",
            trade_id=trade.id,
            details={"slippage_points": 2, "sl": {"expected": "1.09000", "actual": "1.08900"}},
        ),
        _event(
            world,
            account_id,
            T0 + timedelta(minutes=2),
            event_type="outside",
            side="sell",
            opened_from="mobile",
            position_ticket=702,
            volume=Decimal("1.00"),
        ),
        _event(
            world,
            account_id,
            T0 + timedelta(hours=2),
            event_type="closed",
            trade_id=trade.id,
            close_reason="sl",
            close_price=Decimal("1.09000"),
            pnl=Decimal("-102.5000"),
        ),
    ]
    db_session.add_all(events)
    db_session.add(_event(world, world["other_account"]["id"], T0, event_type="matched", position_ticket=9))
    db_session.commit()
    headers = world["user"]["headers"]
    header, rows = _rows(
        api.http.get(f"/api/v1/exports/reconciliation.csv?account_id={account_id}", headers=headers)
    )
    assert header == [column.header for column in exports.RECONCILIATION.columns]
    assert [int(row["id"]) for row in rows] == [event.id for event in events]
    listing = api.http.get(f"/api/v1/reconciliation/{account_id}?per_page=100", headers=headers).json
    assert listing["total"] == 4
    by_id = {item["id"]: item for item in listing["items"]}
    for row in rows:
        _same_as_json(exports.RECONCILIATION, row, by_id[int(row["id"])])
    assert rows[1]["details"] == '{"sl": {"actual": "1.08900", "expected": "1.09000"}, "slippage_points": 2}'
    assert rows[3]["pnl"] == "-102.5000"
    # Without account_id: every own account's events, the other account's too.
    _, every = _rows(api.http.get("/api/v1/exports/reconciliation.csv", headers=headers))
    assert len(every) == 5


def test_the_file_is_streamed_a_chunk_at_a_time(api, world, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 1)
    response = api.http.get("/api/v1/exports/trades.csv", headers=world["user"]["headers"], buffered=False)
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="trades.csv"'
    chunks = [chunk for chunk in response.response if chunk]
    response.close()
    # The header, then one chunk per row: never the whole file in one piece.
    assert len(chunks) == 4
    assert chunks[0].decode().startswith("id,account_id,signal_id")
    assert all(chunk.decode().count("\r\n") == 1 for chunk in chunks)


def test_postgres_and_sqlite_write_the_same_file(api, world, db_session, tmp_path):
    """Postgres formats the cells itself (the fast path); the embedded setup's SQLite goes through
    csv_rules in Python. The same rows must come out as the same bytes."""
    from shared.core.db import db

    account_id = world["account"]["id"]
    db_session.add_all(
        [
            _event(
                world, account_id, T0, event_type="divergence", details={"slippage_points": -3, "sl": "x"}
            ),
            _event(
                world,
                account_id,
                T0 + timedelta(seconds=1),
                event_type="outside",
                opened_from="=cmd",
                volume=Decimal("0.0100"),
                pnl=Decimal("-0.5000"),
            ),
        ]
    )
    db_session.commit()
    sqlite = sa.create_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    tables = [Trade.__table__, ReconciliationLog.__table__]
    db.metadata.create_all(sqlite, tables=tables)
    postgres = db_session.connection()
    with sqlite.begin() as conn:
        for table in tables:
            conn.execute(table.insert(), [dict(row._mapping) for row in postgres.execute(sa.select(table))])
    owner = type("Owner", (), {"id": world["user"]["id"]})()
    for export in (exports.TRADES, exports.RECONCILIATION):
        statement = exports.statement(export, owner)
        from_postgres = "".join(exports.stream(postgres, export, statement))
        with sqlite.connect() as conn:
            from_sqlite = "".join(exports.stream(conn, export, statement))
        assert from_postgres.count("\r\n") > 2
        assert from_sqlite == from_postgres
    sqlite.dispose()
