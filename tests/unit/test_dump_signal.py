"""`dump_signal` writes out SignalSchema's dump by hand for the ingest path; it must never drift."""

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.models import Side, Signal, SignalStatus
from shared.signals.batching import StoredSignal
from web.schemas import SignalSchema, dump_signal

CREATED = datetime(2026, 11, 21, 9, 30, 15, 123456, tzinfo=UTC)


def stored(**overrides):
    values = {
        "id": 7,
        "owner_id": 1,
        "account_id": 2,
        "client_id": 3,
        "instrument": "EURUSD",
        "side": Side.BUY,
        "volume": Decimal("0.1000"),
        "price": Decimal("1.1000000000"),
        "sl": Decimal("1.0950000000"),
        "tp": Decimal("1.1100000000"),
        "comment": "breakout",
        "status": SignalStatus.PENDING,
        "ttl_seconds": 120,
        "expires_at": CREATED + timedelta(seconds=120),
        "idempotency_key": "k-1",
        "signature": "ab" * 32,
        "body_sha256": "cd" * 32,
        "created_at": CREATED,
        "decided_at": None,
    }
    return StoredSignal(**{**values, **overrides})


@pytest.mark.parametrize(
    "signal",
    [
        stored(),
        # Optional fields absent, a sell, whole numbers (normalize() must not give "1E+2").
        stored(side=Side.SELL, price=None, sl=None, tp=None, comment=None, idempotency_key=None),
        stored(volume=Decimal("100.0000"), price=Decimal("2500.0000000000"), tp=Decimal("2600")),
        stored(status=SignalStatus.APPROVED, decided_at=CREATED + timedelta(seconds=5)),
        stored(comment="ünïcode ✓", instrument="XAUUSD.m"),
    ],
)
def test_dump_signal_equals_the_schemas_dump(signal):
    assert dump_signal(signal) == SignalSchema().dump(signal)


def test_dump_signal_equals_the_schemas_dump_for_an_orm_signal():
    # StoredSignal's fields are the signal columns the API reads, so they make a full ORM Signal.
    signal = Signal(**asdict(stored(comment=None, decided_at=CREATED)))
    assert dump_signal(signal) == SignalSchema().dump(signal)
