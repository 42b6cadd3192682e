"""HMAC-SHA256 request signing for strategy clients. Pure functions: no I/O, no clock of their own.

A client signs `"{timestamp}.{raw body}"` with its secret and sends the hex digest in `X-Signature`,
the unix timestamp in `X-Timestamp` and its id in `X-Client-Id`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from decimal import Decimal
from typing import Any


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_matches(secret: str, timestamp: int | str, body: bytes, signature: str) -> bool:
    # compare_digest: the time taken must not reveal how many leading characters were right.
    return hmac.compare_digest(sign(secret, timestamp, body), signature.strip().lower())


def parse_timestamp(raw: str | None) -> int | None:
    """The X-Timestamp header as whole unix seconds, or None when absent or not a number."""
    if raw is None:
        return None
    raw = raw.strip()
    if not raw or len(raw) > 20:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def timestamp_is_fresh(timestamp: int, now: float, max_skew_seconds: int) -> bool:
    """True when the timestamp is within `max_skew_seconds` of now, in either direction."""
    return abs(now - timestamp) <= max_skew_seconds


def _canonical_number(value: Any) -> Any:
    """A Decimal (the API reads JSON fractions as Decimal, not float) for the canonical JSON: the float
    it was read as before, when that float is exactly this number, so that hashes stored then still
    match; otherwise its digits, so two prices that differ only past a float's 17 digits differ."""
    if isinstance(value, Decimal):
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def canonical_body_hash(payload: Any) -> str:
    """SHA-256 of the JSON payload with sorted keys: equal for the same signal however it was spaced."""
    canonical = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_canonical_number
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
