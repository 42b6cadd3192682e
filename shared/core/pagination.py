"""One page of a listing: what every paged endpoint returns, read the same way everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import sqlalchemy as sa

from shared.core.db import DbSession

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """The rows of page `page` (1-based), `per_page` at most, and how many rows the whole listing has.

    Its attributes are the paging envelope the API sends ({items, total, page, per_page})."""

    items: list[T]
    total: int
    page: int
    per_page: int


def paginate(session: DbSession, statement: sa.Select[T], *, page: int, per_page: int) -> Page[T]:
    """Page `page` of what `statement` selects, and the total it would select without paging.

    `statement` carries the listing's order, which must end in a unique column: rows that tie would
    otherwise come back in any order, and one could show on two pages and another on none. The total
    counts the statement's own rows (without its order), so any filter, join or distinct it has counts
    as it lists. A page past the end is empty, with the right total.
    """
    counted = sa.select(sa.func.count()).select_from(statement.order_by(None).subquery())
    total = session.scalar(counted) or 0
    items = list(session.scalars(statement.limit(per_page).offset((page - 1) * per_page)))
    return Page(items=items, total=total, page=page, per_page=per_page)
