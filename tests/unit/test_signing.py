import hashlib
import hmac
import json
from decimal import Decimal

from shared.core.signing import (
    canonical_body_hash,
    parse_timestamp,
    sign,
    signature_matches,
    timestamp_is_fresh,
)

SECRET = "s3cret"
BODY = b'{"instrument":"EURUSD","side":"buy","volume":0.1}'


def test_signature_is_hex_hmac_sha256_of_timestamp_dot_body():
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, BODY) == expected
    assert sign(SECRET, "1700000000", BODY) == expected


def test_matching_signature_is_accepted_in_any_case():
    signature = sign(SECRET, 1700000000, BODY)
    assert signature_matches(SECRET, 1700000000, BODY, signature)
    assert signature_matches(SECRET, 1700000000, BODY, signature.upper())


def test_tampered_body_timestamp_or_secret_is_refused():
    signature = sign(SECRET, 1700000000, BODY)
    assert not signature_matches(SECRET, 1700000000, BODY.replace(b"0.1", b"9.1"), signature)
    assert not signature_matches(SECRET, 1700000001, BODY, signature)
    assert not signature_matches("other", 1700000000, BODY, signature)
    assert not signature_matches(SECRET, 1700000000, BODY, "")


def test_parse_timestamp_accepts_only_whole_seconds():
    assert parse_timestamp("1700000000") == 1700000000
    assert parse_timestamp(" 1700000000 ") == 1700000000
    for bad in (None, "", "abc", "1.5", "1e9", "9" * 40):
        assert parse_timestamp(bad) is None


def test_timestamp_freshness_is_symmetric_and_inclusive():
    assert timestamp_is_fresh(1000, now=1300, max_skew_seconds=300)
    assert timestamp_is_fresh(1600, now=1300, max_skew_seconds=300)
    assert not timestamp_is_fresh(999, now=1300, max_skew_seconds=300)
    assert not timestamp_is_fresh(1601, now=1300, max_skew_seconds=300)


def test_canonical_hash_ignores_key_order_and_spacing_but_not_values():
    assert canonical_body_hash({"a": 1, "b": [1, 2]}) == canonical_body_hash({"b": [1, 2], "a": 1})
    assert canonical_body_hash({"a": 1}) != canonical_body_hash({"a": 2})


def test_canonical_hash_of_decimals_matches_the_hash_of_the_floats_bodies_were_read_as_before():
    """Bodies are now read with parse_float=Decimal. A retry of a signal stored before that (same
    Idempotency-Key) must hash as it did then, when json.loads made 0.1 a float."""

    before = canonical_body_hash(json.loads('{"volume": 0.10, "price": 1.1, "lots": 1e1}'))
    now = canonical_body_hash({"volume": Decimal("0.10"), "price": Decimal("1.1"), "lots": Decimal("1E+1")})
    assert now == before


def test_canonical_hash_tells_apart_decimals_a_float_cannot():
    assert canonical_body_hash({"price": Decimal("123456789.0123456789")}) != canonical_body_hash(
        {"price": Decimal("123456789.0123456788")}
    )
