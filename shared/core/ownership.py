"""Reading one row on behalf of its owner: the one check that an owner reaches only their own rows."""

from __future__ import annotations

from typing import Any, TypeVar

from shared.core.db import DbSession
from shared.core.errors import NotFound

M = TypeVar("M")


def get_owned(session: DbSession, model: type[M], row_id: int, owner_id: int, *, name: str) -> M:
    """The `model` row `row_id` if `owner_id` owns it (its `owner_column`, `owner_id` unless the model
    names another). Someone else's row is NotFound, word for word as a row that does not exist: an id
    must not tell anyone whether another owner has it."""
    row: Any = session.get(model, row_id)
    if row is None or getattr(row, getattr(model, "owner_column", "owner_id")) != owner_id:
        raise NotFound(f"{name} {row_id} not found")
    return row
