"""The states and choices the tables store, and how they are stored."""

from __future__ import annotations

import enum

import sqlalchemy as sa


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class SignalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class TradeState(enum.StrEnum):
    PENDING = "pending"  # row made, nothing sent yet
    SENT = "sent"  # order_send under way or its outcome unknown: look for it before sending again
    FILLED = "filled"
    PARTIAL = "partial"  # filled below the requested volume
    REJECTED = "rejected"  # refused by a pre-trade check or by the broker
    FAILED = "failed"  # gave up: terminal unreachable after every retry
    CLOSED = "closed"


class Decision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


def _enum_values(enum_cls: type[enum.Enum]) -> list[str]:
    return [member.value for member in enum_cls]


def string_enum(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    # Stored as VARCHAR + CHECK rather than a native Postgres ENUM: adding a state later is a plain
    # migration on every database, not an ALTER TYPE.
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=_enum_values,
        validate_strings=True,
    )
