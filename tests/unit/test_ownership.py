"""One owner reaches only their own rows, and someone else's row reads exactly as a missing one."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shared.core.errors import NotFound
from shared.core.ownership import get_owned


@dataclass
class Note:
    id: int
    owner_id: int


@dataclass
class Decision:
    owner_column = "user_id"
    id: int
    user_id: int


class Session:
    def __init__(self, *rows: object) -> None:
        self.rows = {(type(row), row.id): row for row in rows}  # type: ignore[attr-defined]

    def get(self, model: type, row_id: int) -> object | None:
        return self.rows.get((model, row_id))


def test_the_owner_gets_the_row():
    note = Note(id=1, owner_id=7)
    assert get_owned(Session(note), Note, 1, 7, name="note") is note  # type: ignore[arg-type]


def test_another_owners_row_is_not_found_word_for_word_as_a_missing_one():
    session = Session(Note(id=1, owner_id=7))
    with pytest.raises(NotFound) as foreign:
        get_owned(session, Note, 1, 8, name="note")  # type: ignore[arg-type]
    with pytest.raises(NotFound) as missing:
        get_owned(session, Note, 2, 8, name="note")  # type: ignore[arg-type]
    assert str(foreign.value) == "note 1 not found"
    assert str(missing.value) == "note 2 not found"


def test_a_model_may_name_its_owner_column():
    decision = Decision(id=3, user_id=5)
    session = Session(decision)
    assert get_owned(session, Decision, 3, 5, name="decision") is decision  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        get_owned(session, Decision, 3, 6, name="decision")  # type: ignore[arg-type]
