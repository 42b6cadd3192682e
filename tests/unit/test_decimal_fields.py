"""Decimals in and out of the API (web.schemas): what is accepted, how places are counted, how they are
written."""

import re
from decimal import Decimal

import marshmallow as ma
import pytest

from web.schemas import DECIMAL_PATTERN, DecimalText, ExactDecimal, decimal_places, decimal_text


@pytest.mark.parametrize(
    ("number", "places"),
    [
        ("0.10", 1),
        ("1.0000", 0),
        ("100", 0),
        ("1E+1", 0),
        ("0.000", 0),
        ("0.00001", 5),
        ("1.00000000000000000000000000001", 29),  # normalize() would round this to 1 and say 0
    ],
)
def test_decimal_places_are_counted_exactly_without_trailing_zeros(number, places):
    assert decimal_places(Decimal(number)) == places


@pytest.mark.parametrize(
    ("value", "normalize", "text"),
    [
        (Decimal("1E+1"), True, "10"),
        (Decimal("1E+1"), False, "10"),
        (Decimal("1.000E-7"), False, "0.0000001000"),  # str() would write 1.000E-7
        (Decimal("0E-10"), True, "0"),
        (Decimal("10000.0000"), False, "10000.0000"),
        (Decimal("10000.0000"), True, "10000"),
        (Decimal("-12.50"), True, "-12.5"),
        ("1E+1", False, "10"),  # position rows hold str(Decimal)
    ],
)
def test_decimals_are_written_as_the_documented_pattern_never_with_an_exponent(value, normalize, text):
    assert decimal_text(value, normalize=normalize) == text
    assert re.fullmatch(DECIMAL_PATTERN, text)
    assert DecimalText(normalize=normalize).serialize("x", {"x": value}) == text


VOLUME = ExactDecimal(max_places=4, max_value=Decimal("100000"))


@pytest.mark.parametrize(
    ("given", "loaded"),
    [("0.1", Decimal("0.1")), ("00.5", Decimal("0.5")), (Decimal("1E+1"), Decimal(10)), (3, Decimal(3))],
)
def test_volumes_accepted(given, loaded):
    assert VOLUME.deserialize(given) == loaded


@pytest.mark.parametrize(
    "given", ["1_000", "0.1e1", " 0.1", "NaN", "0.1\n", "\u0661", "+1", True, [1], Decimal("NaN")]
)
def test_volumes_refused(given):
    with pytest.raises(ma.ValidationError):
        VOLUME.deserialize(given)
