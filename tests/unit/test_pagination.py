"""The one paging helper, on an in-memory SQLite table of its own."""

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shared.core.pagination import Page, paginate


class _Base(DeclarativeBase):
    pass


class Item(_Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(8))


@pytest.fixture
def session():
    engine = sa.create_engine("sqlite://")
    _Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(Item(id=i, kind="even" if i % 2 == 0 else "odd") for i in range(1, 6))
        session.commit()
        yield session
    engine.dispose()


def ids(page: Page[Item]) -> list[int]:
    return [item.id for item in page.items]


def test_page_two_of_five_rows_two_a_page_is_rows_three_and_four(session):
    page = paginate(session, sa.select(Item).order_by(Item.id), page=2, per_page=2)
    assert (ids(page), page.total, page.page, page.per_page) == ([3, 4], 5, 2, 2)


def test_the_last_page_holds_what_is_left(session):
    page = paginate(session, sa.select(Item).order_by(Item.id), page=3, per_page=2)
    assert (ids(page), page.total) == ([5], 5)


def test_a_page_past_the_end_is_empty_with_the_right_total(session):
    page = paginate(session, sa.select(Item).order_by(Item.id), page=4, per_page=2)
    assert (ids(page), page.total, page.page) == ([], 5, 4)


def test_the_statements_order_is_kept(session):
    page = paginate(session, sa.select(Item).order_by(Item.id.desc()), page=1, per_page=3)
    assert ids(page) == [5, 4, 3]


def test_the_total_counts_only_what_the_filter_selects(session):
    page = paginate(session, sa.select(Item).where(Item.kind == "odd").order_by(Item.id), page=1, per_page=2)
    assert (ids(page), page.total) == ([1, 3], 3)


def test_an_empty_listing_is_an_empty_first_page(session):
    page = paginate(session, sa.select(Item).where(Item.kind == "none").order_by(Item.id), page=1, per_page=2)
    assert (ids(page), page.total) == ([], 0)
