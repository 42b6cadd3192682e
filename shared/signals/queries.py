"""Reading an owner's signals."""

from __future__ import annotations

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.core.ownership import get_owned
from shared.core.pagination import Page, paginate
from shared.models import Signal, SignalStatus, User


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
