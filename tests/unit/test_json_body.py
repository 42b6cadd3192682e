"""The one JSON reader of every request body (web.json_body.parse_json): strict where Python's json
module is lenient."""

from decimal import Decimal

import pytest

from web.json_body import DuplicateKey, NotJsonConstant, parse_json


def test_fractions_are_read_as_exact_decimals_and_integers_as_ints():
    body = parse_json('{"volume": 0.1, "price": 123456789.0123456789, "lots": 1e1, "ttl": 60}')
    assert body == {
        "volume": Decimal("0.1"),
        "price": Decimal("123456789.0123456789"),
        "lots": Decimal("10"),
        "ttl": 60,
    }
    assert type(body["ttl"]) is int and type(body["volume"]) is Decimal


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"volume": "0.1", "volume": "1000"}', "volume"),
        ('{"a": 1, "b": {"c": 1, "c": 1}}', "c"),  # nested, and even with the same value twice
        ('[{"x": 1}, {"y": 1, "y": 2}]', "y"),
    ],
)
def test_a_key_given_twice_anywhere_is_refused_naming_it(text, key):
    with pytest.raises(DuplicateKey) as refused:
        parse_json(text)
    assert refused.value.key == key


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(token):
    with pytest.raises(NotJsonConstant, match=token):
        parse_json(f'{{"price": {token}}}')


def test_the_same_key_in_different_objects_is_fine():
    assert parse_json('{"a": {"k": 1}, "b": {"k": 2}}') == {"a": {"k": 1}, "b": {"k": 2}}
