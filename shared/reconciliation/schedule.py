"""Which accounts beat's tick sends to be reconciled, and in which order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.models import Account, AccountSync


def accounts_due(session: DbSession, now: datetime) -> list[int]:
    """Every account whose circuit breaker is not open, stalest first: when a tick cannot finish every
    account, the ones left over go first next time instead of the same tail being dropped on every
    tick. The breaker test is `breaker.breaker_is_open`, said in SQL so that the database filters."""
    return list(
        session.scalars(
            sa.select(Account.id)
            .outerjoin(AccountSync, AccountSync.account_id == Account.id)
            .where(sa.or_(AccountSync.breaker_open_until.is_(None), AccountSync.breaker_open_until <= now))
            .order_by(AccountSync.last_synced_at.asc().nulls_first(), Account.id)
        )
    )


def batches(account_ids: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(account_ids), size):
        yield list(account_ids[start : start + size])
