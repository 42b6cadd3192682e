"""How values become CSV cells: formulas never reach a spreadsheet, numbers stay numbers."""

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from shared.insight.csv_rules import CONVERTERS, cell, decimal_cell, json_cell, text_cell, time_cell
from shared.models import Side


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_text_that_a_spreadsheet_would_evaluate_is_escaped(text):
    assert text_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["EURUSD", "a=b", " =1", "", "'quoted"])
def test_other_text_is_left_as_it_is(text):
    assert text_cell(text) == text


def test_decimals_are_written_as_stored_in_plain_notation():
    assert decimal_cell(Decimal("-12.5000")) == "-12.5000"  # a loss is a number, not escaped
    assert decimal_cell(Decimal("0E-8")) == "0.00000000"
    assert decimal_cell(Decimal("1E+1")) == "10"
    assert cell(Decimal("1.10000")) == "1.10000"


def test_times_are_utc_iso_with_z():
    paris = timezone(timedelta(hours=1))
    assert time_cell(datetime(2026, 11, 30, 15, 0, 1, 250000, tzinfo=paris)) == "2026-11-30T14:00:01.250000Z"
    assert time_cell(datetime(2026, 11, 30, 14, 0)) == "2026-11-30T14:00:00.000000Z"  # naive: stored as UTC


def test_json_is_written_as_postgres_writes_jsonb_and_escaped_when_it_could_be_a_formula():
    # Keys shortest first, then by their bytes; ", " and ": " between items; text unescaped.
    assert json_cell({"bb": Decimal("1.5"), "a": 1, "ab": ["é"]}) == '{"a": 1, "ab": ["é"], "bb": "1.5"}'
    assert json_cell({"sl": {"expected": 1, "actual": 2}}) == '{"sl": {"actual": 2, "expected": 1}}'
    assert json_cell("=1+1") == '"=1+1"'  # a JSON string starts with a quote: safe
    assert json_cell(-1) == "'-1"


def test_cell_dispatches_on_the_value():
    assert cell(None) == ""
    assert cell(Side.BUY) == "buy"
    assert cell(True) == "true"
    assert cell(42) == "42"
    assert cell("=x") == "'=x"
    assert cell({"k": [1]}) == '{"k": [1]}'
    assert cell(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"


def test_converters_leave_none_empty_and_escape_text():
    assert [CONVERTERS[kind](None) for kind in ("int", "text", "decimal", "time", "json", "enum")] == [""] * 6
    assert CONVERTERS["text"]("-x") == "'-x"
    assert CONVERTERS["decimal"](Decimal("-1.50")) == "-1.50"
    assert CONVERTERS["int"](-3) == "-3"
