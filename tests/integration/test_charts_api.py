"""GET /api/v1/charts/equity.png: an account's equity chart from its snapshots (sync rows and rolled-up
ones), with the guards' warnings, alerts and closes marked; checked on the decoded image's pixels."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from PIL import Image

from shared.insight import chart, chart_queries
from shared.models import Account, AlertClose, AuditLog, DrawdownAlert, GuardState, PositionSnapshot, User

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
URL = "/api/v1/charts/equity.png"


def snapshot(account_id: int, at: datetime, equity: str, **values) -> PositionSnapshot:
    return PositionSnapshot(
        account_id=account_id,
        currency=values.pop("currency", "EUR"),
        equity=Decimal(equity),
        balance=Decimal(values.pop("balance", "10000")),
        peak_equity=Decimal("10000"),
        drawdown_percent=Decimal(values.pop("drawdown", "0")),
        open_positions=1,
        total_lots=Decimal("0.10"),
        synced_at=at,
        **values,
    )


def seed_history(db_session, account_id: int, owner_id: int) -> None:
    """Six hours: the first two as minute roll-ups (with their extremes), then a sync a minute, equity
    dipping 5% in the middle; a guard warning, an alert and the close it made along the way."""
    rows = []
    for minute in range(120):
        rows.append(
            snapshot(
                account_id,
                T0 + timedelta(minutes=minute),
                "10000",
                resolution="minute",
                equity_min=Decimal("9990"),
                equity_max=Decimal("10010"),
                samples=6,
            )
        )
    for minute in range(120, 360):
        dip = max(0, 60 - abs(minute - 240)) * Decimal("8.33")  # to 500 below, at 4 hours in
        rows.append(
            snapshot(
                account_id,
                T0 + timedelta(minutes=minute),
                str(Decimal(10000) - dip),
                drawdown=str((dip / 100).quantize(Decimal("0.0001"))),
            )
        )
    db_session.add_all(rows)
    db_session.add(
        AuditLog(
            actor_type="system",
            actor_id=None,
            action="guard.warning",
            target_type="account",
            target_id=account_id,
            meta={"limit": "daily loss", "level": "warning", "drawdown_percent": "3.1", "currency": "EUR"},
            created_at=T0 + timedelta(minutes=215),
        )
    )
    alert = DrawdownAlert(
        account_id=account_id,
        owner_id=owner_id,
        alert_type="drawdown",
        limit_name="daily loss",
        reason="daily loss 5% > 4.5%",
        currency="EUR",
        equity=Decimal("9500"),
        close_at=T0 + timedelta(minutes=240, seconds=30),
        created_at=T0 + timedelta(minutes=240),
        status="executed",
    )
    db_session.add(alert)
    db_session.flush()
    for ticket, state, closed_at in (
        (501, "closed", T0 + timedelta(minutes=270)),
        (502, "failed", None),  # not closed: not marked
    ):
        db_session.add(
            AlertClose(
                alert_id=alert.id,
                account_id=account_id,
                position_ticket=ticket,
                position_key=f"key-{ticket}",
                symbol="EURUSD",
                side="buy",
                volume=Decimal("0.10"),
                state=state,
                closed_at=closed_at,
            )
        )
    db_session.commit()


@pytest.fixture
def world(api, db_session):
    world = api.setup()
    account_id = world["account"]["id"]
    owner_id = db_session.get(Account, account_id).owner_id
    seed_history(db_session, account_id, owner_id)
    return world


def panels(png: bytes) -> tuple[np.ndarray, np.ndarray]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (1200, 700)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    boxes = []
    for left, bottom, width, height in (chart.EQUITY_PANEL, chart.DRAWDOWN_PANEL):
        x0, x1 = round(left * 1200) + 3, round((left + width) * 1200) - 3
        y0, y1 = round((1 - bottom - height) * 700) + 3, round((1 - bottom) * 700) - 3
        boxes.append(pixels[y0:y1, x0:x1])
    return boxes[0], boxes[1]


def count(pixels: np.ndarray, hex_colour: str, tolerance: int = 12) -> int:
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target).max(axis=-1) <= tolerance).sum())


def get(client, headers, **query):
    return client.get(URL, query_string=query, headers=headers)


def test_the_png_shows_the_history_and_marks_the_warning_the_alert_and_the_close(client, world):
    headers = world["user"]["headers"]
    response = get(
        client,
        headers,
        account_id=world["account"]["id"],
        **{"from": "2026-03-02T08:00:00", "to": "2026-03-02T14:00:00Z"},  # naive is UTC
    )
    assert response.status_code == 200 and response.mimetype == "image/png"
    upper, lower = panels(response.data)
    assert count(upper, chart.COLOURS["equity"]) > 500
    assert count(lower, chart.COLOURS["drawdown"]) > 300
    for kind in chart.MARKER_KINDS:
        assert count(upper, chart.COLOURS[kind]) > 15, kind
    # Without a range: the whole history, the same markers.
    whole, _ = panels(get(client, headers, account_id=world["account"]["id"]).data)
    assert all(count(whole, chart.COLOURS[kind]) > 15 for kind in chart.MARKER_KINDS)


def test_a_range_without_the_markers_or_without_data_is_still_a_chart(client, world):
    headers = world["user"]["headers"]
    early = get(client, headers, account_id=world["account"]["id"], to="2026-03-02T09:00:00Z")
    upper, _ = panels(early.data)
    assert count(upper, chart.COLOURS["equity"]) > 300
    assert all(count(upper, chart.COLOURS[kind], tolerance=30) == 0 for kind in chart.MARKER_KINDS)
    empty = get(client, headers, account_id=world["account"]["id"], **{"from": "2027-01-01T00:00:00Z"})
    assert empty.status_code == 200
    upper, lower = panels(empty.data)
    assert count(upper, chart.COLOURS["equity"]) == 0 and count(lower, chart.COLOURS["drawdown"]) == 0
    svg = get(client, headers, account_id=world["account"]["id"], format="svg", **{"from": "2027-01-01"})
    assert chart.NO_DATA_TEXT in svg.get_data(as_text=True)


def test_the_svg_carries_the_currency_of_the_snapshots(client, world):
    response = get(client, world["user"]["headers"], account_id=world["account"]["id"], format="svg")
    assert response.status_code == 200 and response.mimetype == "image/svg+xml"
    text = response.get_data(as_text=True)
    assert text.startswith("<?xml") and "<svg" in text
    assert f"{world['account']['name']}: equity and balance (EUR)" in text and "Equity (EUR)" in text


def test_without_snapshots_the_currency_is_the_guards_else_the_accounts(api, client, db_session):
    world = api.setup()
    headers, account_id = world["user"]["headers"], world["account"]["id"]
    svg = get(client, headers, account_id=account_id, format="svg").get_data(as_text=True)
    assert "Equity (USD)" in svg and chart.NO_DATA_TEXT in svg
    db_session.add(GuardState(account_id=account_id, currency="GBP"))
    db_session.commit()
    svg = get(client, headers, account_id=account_id, format="svg").get_data(as_text=True)
    assert "Equity (GBP)" in svg


def test_the_markers_are_this_accounts_own_and_only_closed_positions(api, db_session, world):
    other = api.setup()
    other_id = other["account"]["id"]
    seed_history(db_session, other_id, db_session.get(Account, other_id).owner_id)
    found = chart_queries.markers(db_session, world["account"]["id"], None, None)
    assert [(marker.kind, marker.at) for marker in found] == [
        ("warning", T0 + timedelta(minutes=215)),
        ("alert", T0 + timedelta(minutes=240)),
        ("close", T0 + timedelta(minutes=270)),
    ]
    within = chart_queries.markers(db_session, world["account"]["id"], T0, T0 + timedelta(minutes=240))
    assert [marker.kind for marker in within] == ["warning"]  # `to` is exclusive


def test_the_history_is_read_across_tiers_and_downsampled(api, db_session, world):
    owner = db_session.get(User, db_session.get(Account, world["account"]["id"]).owner_id)
    data = chart_queries.equity_chart(db_session, owner, world["account"]["id"], buckets=60)
    assert (data.start, data.end) == (T0, T0 + timedelta(minutes=359))
    assert len(data.buckets) == 60 and sum(bucket.count for bucket in data.buckets) == 360
    assert min(bucket.low for bucket in data.buckets) == pytest.approx(9500.2, abs=0.01)  # the dip's bottom
    assert min(bucket.low for bucket in data.buckets[:20]) == 9990.0  # the roll-ups' own extremes
    assert max(bucket.high for bucket in data.buckets) == 10010.0
    assert data.currency == "EUR" and data.title == world["account"]["name"]


def test_another_users_account_is_404_and_bad_parameters_are_422_naming_them(api, client, world):
    stranger = api.user()
    account_id = world["account"]["id"]
    assert get(client, stranger["headers"], account_id=account_id).status_code == 404
    assert get(client, world["user"]["headers"], account_id=account_id + 10_000).status_code == 404
    assert client.get(URL, query_string={"account_id": account_id}).status_code == 401
    headers = world["user"]["headers"]
    for query, field in (
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-03-02T10:00:00Z", "to": "2026-03-02T10:00:00Z"}, "to"),
        ({"from": "2026-03-02T11:00:00Z", "to": "2026-03-02T10:00:00Z"}, "to"),
        ({"to": "2026-13-01"}, "to"),
        ({"format": "gif"}, "format"),
    ):
        response = get(client, headers, account_id=account_id, **query)
        assert response.status_code == 422, query
        assert field in response.json["error"]["fields"], (query, response.json)
    missing = client.get(URL, headers=headers)
    assert missing.status_code == 422 and "account_id" in missing.json["error"]["fields"]
