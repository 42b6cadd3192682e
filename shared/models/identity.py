"""Who: users, their MT5 accounts, their strategy clients, and the check that the encryption key still reads
the stored secrets.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.core.db import UTCDateTime, db, utcnow
from shared.models.enums import Role, string_enum


class User(db.Model):  # type: ignore[name-defined]
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[Role] = mapped_column(string_enum(Role, "user_role"), default=Role.USER)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class Account(db.Model):  # type: ignore[name-defined]
    """A broker account on an MT5 terminal. Credentials are encrypted at rest and never returned.

    One MT5 account (login on a trade server) is registered once, whoever owns it: a second copy would
    see the first one's trades as positions opened outside TradeGuard, and two owners would each act on
    the other's orders."""

    __tablename__ = "accounts"
    __table_args__ = (sa.UniqueConstraint("owner_id", "name"), sa.UniqueConstraint("login", "server"))

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    terminal_url: Mapped[str] = mapped_column(sa.String(255))
    login: Mapped[int] = mapped_column(sa.BigInteger)
    server: Mapped[str] = mapped_column(sa.String(100))
    credentials_encrypted: Mapped[bytes] = mapped_column(sa.LargeBinary)
    currency: Mapped[str] = mapped_column(sa.String(3), default="USD")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    owner: Mapped[User] = relationship()


class KeyCheck(db.Model):  # type: ignore[name-defined]
    """A value encrypted, or a fingerprint taken, with the deployment's keys (see
    shared.identity.key_check): a process whose keys cannot read it refuses to start instead of
    running with the wrong keys."""

    __tablename__ = "key_checks"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)  # "encryption" | "jwt"
    token: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StrategyClient(db.Model):  # type: ignore[name-defined]
    """A program allowed to send signals for one account, authenticated by an HMAC secret."""

    __tablename__ = "strategy_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    secret_encrypted: Mapped[bytes] = mapped_column(sa.LargeBinary)
    revoked: Mapped[bool] = mapped_column(default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    account: Mapped[Account] = relationship()
