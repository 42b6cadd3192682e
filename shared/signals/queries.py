"""Reading an owner's signals."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from shared.core.db import DbSession, utcnow
from shared.core.ownership import get_owned
from shared.core.pagination import Page, paginate
from shared.models import Signal, SignalStatus, StrategyClient, User


def get_own_signal(session: DbSession, owner: User, signal_id: int) -> Signal:
    return get_owned(session, Signal, signal_id, owner.id, name="signal")


def list_own_signals(
    session: DbSession, owner: User, *, status: SignalStatus | None, page: int, per_page: int
) -> Page[Signal]:
    where = [Signal.owner_id == owner.id]
    if status is not None:
        where.append(Signal.status == status)
    statement = sa.select(Signal).where(*where).order_by(Signal.created_at.desc(), Signal.id.desc())
    return paginate(session, statement, page=page, per_page=per_page)


@dataclass(frozen=True)
class PendingSignal:
    signal: Signal
    client_name: str


def pending_with_clients(session: DbSession, owner: User, *, limit: int = 200) -> list[PendingSignal]:
    """The owner's signals waiting for a decision and not yet expired, newest first, each with the name of
    the strategy client that sent it (the owner's page lists them)."""
    rows = session.execute(
        sa.select(Signal, StrategyClient.name)
        .join(StrategyClient, StrategyClient.id == Signal.client_id)
        .where(
            Signal.owner_id == owner.id, Signal.status == SignalStatus.PENDING, Signal.expires_at > utcnow()
        )
        .order_by(Signal.created_at.desc(), Signal.id.desc())
        .limit(limit)
    ).all()
    return [PendingSignal(signal, name) for signal, name in rows]
