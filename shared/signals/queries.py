"""Reading an owner's signals."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.core.errors import NotFound
from shared.models import Signal, SignalStatus, User

log = logging.getLogger(__name__)


def get_own_signal(session: DbSession, owner: User, signal_id: int) -> Signal:
    signal = session.get(Signal, signal_id)
    if signal is None or signal.owner_id != owner.id:
        raise NotFound(f"signal {signal_id} not found")
    return signal


def list_own_signals(
    session: DbSession, owner: User, *, status: SignalStatus | None, page: int, per_page: int
) -> tuple[list[Signal], int]:
    where = [Signal.owner_id == owner.id]
    if status is not None:
        where.append(Signal.status == status)
    total = session.scalar(sa.select(sa.func.count()).select_from(Signal).where(*where)) or 0
    items = session.scalars(
        sa.select(Signal)
        .where(*where)
        .order_by(Signal.created_at.desc(), Signal.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return list(items), total
