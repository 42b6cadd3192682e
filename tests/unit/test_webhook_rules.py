"""The pure rules of webhooks: the signature a receiver checks, the retry schedule, which addresses a
delivery may reach, which URLs are accepted, and the payload's shape."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.core.signing import signature_matches
from shared.notifications import rules
from shared.notifications.events import ALL_EVENTS
from shared.notifications.rules import Target


def test_the_signature_is_an_independent_hmac_of_timestamp_dot_body_and_the_signal_convention():
    secret, timestamp, body = "s3cret-Ü", 1764576000, b'{"event":"trade.filled","id":"x"}'
    expected = hmac.new(secret.encode(), b"1764576000." + body, hashlib.sha256).hexdigest()

    assert rules.sign(secret, timestamp, body) == expected
    assert rules.sign(secret, str(timestamp), body) == expected
    # A receiver can check it as TradeGuard checks a strategy's signal.
    assert signature_matches(secret, timestamp, body, expected)
    assert rules.sign(secret, timestamp + 1, body) != expected
    assert rules.sign(secret, timestamp, body + b" ") != expected
    assert rules.sign("other", timestamp, body) != expected


def test_the_retry_schedule_backs_off_over_about_an_hour_then_stops():
    delays = [rules.retry_delay(attempt) for attempt in range(1, rules.MAX_ATTEMPTS)]
    assert all(delay is not None for delay in delays)
    total = sum(d for d in delays if d is not None)
    assert 55 * 60 <= total <= 70 * 60, total
    assert delays == sorted(delays), "never shorter than the one before"
    assert delays[0] <= 30  # a receiver that blinked gets the event soon
    assert rules.retry_delay(rules.MAX_ATTEMPTS) is None  # the last attempt is not followed by another
    assert rules.retry_delay(0) is None
    assert rules.retry_delay(1, scale=0.001) == pytest.approx(delays[0] * 0.001)


# (address, refused with private addresses allowed off, refused with them allowed on)
ADDRESSES = [
    ("8.8.8.8", False, False),
    ("93.184.216.34", False, False),
    ("2606:4700:4700::1111", False, False),
    ("127.0.0.1", True, False),
    ("127.8.9.10", True, False),
    ("::1", True, False),
    ("10.0.0.1", True, False),
    ("172.16.5.4", True, False),
    ("192.168.1.1", True, False),
    ("fc00::1", True, False),
    ("fd12:3456::1", True, False),
    ("169.254.1.1", True, False),
    ("fe80::1", True, False),
    ("fe80::1%2", True, False),
    ("100.64.0.1", True, False),
    ("100.127.255.254", True, False),
    ("::ffff:127.0.0.1", True, False),
    ("::ffff:10.1.1.1", True, False),
    ("::ffff:8.8.8.8", False, False),
    ("2002:7f00:1::", True, False),  # 6to4 carrying 127.0.0.1
    ("64:ff9b::a00:1", True, False),  # NAT64 carrying 10.0.0.1
    # Never, whatever the setting.
    ("169.254.169.254", True, True),
    ("::ffff:169.254.169.254", True, True),
    ("fd00:ec2::254", True, True),
    ("0.0.0.0", True, True),  # noqa: S104 - the address under test
    ("::", True, True),
    ("224.0.0.1", True, True),
    ("ff02::1", True, True),
    ("240.0.0.1", True, True),
    ("255.255.255.255", True, True),
]


@pytest.mark.parametrize(("address", "refused", "refused_when_private_allowed"), ADDRESSES)
def test_which_addresses_a_webhook_may_reach(address, refused, refused_when_private_allowed):
    assert rules.is_refused_address(address, allow_private=False) is refused
    assert rules.is_refused_address(address, allow_private=True) is refused_when_private_allowed
    assert rules.is_refused_address(ipaddress.ip_address(address), allow_private=False) is refused


def test_a_refusal_says_why():
    assert rules.refusal_reason("127.0.0.1", False) == "a loopback address"
    assert "metadata" in (rules.refusal_reason("169.254.169.254", True) or "")
    assert "carried in" in (rules.refusal_reason("::ffff:10.0.0.1", False) or "")


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("https://hooks.example.com/tg", Target("https", "hooks.example.com", 443, "/tg")),
        ("HTTP://Example.COM", Target("http", "example.com", 80, "/")),
        ("http://example.com:8080/a/b?x=1&y=2", Target("http", "example.com", 8080, "/a/b?x=1&y=2")),
        ("https://[2606:4700::1]:8443/", Target("https", "2606:4700::1", 8443, "/")),
        ("https://example.com./", Target("https", "example.com", 443, "/")),
    ],
)
def test_accepted_urls_and_where_they_go(url, target):
    assert rules.parse_url(url) == target


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/", "http"),
        ("file:///etc/passwd", "http"),
        ("gopher://example.com/", "http"),
        ("example.com/hook", "http"),
        ("http:///path", "host"),
        ("https://user:pass@example.com/", "user name"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com:99999/", "valid URL"),
        ("https://exa mple.com/", "spaces"),
        ("https://example.com/\r\nX-Injected: 1", "control"),
        ("https://example.com/" + "a" * 2048, "2048"),
        # Not ASCII: http.client cannot send it (every delivery failed), and it can be made to read as
        # another URL (a right-to-left override, a look-alike host).
        ("http://example.com/é", "non-ASCII"),
        ("https://example.com/in?name=café", "non-ASCII"),
        ("https://example.com/\u202egnp.exe", "non-ASCII"),
        ("https://example.com/\x85", "non-ASCII"),  # a C1 control character
        ("https://exämple.com/", "xn--"),
        # Port 0 was taken for "no port" and the POST went to 80 or 443.
        ("http://example.com:0/", "port 0"),
        ("https://example.com:00/hook", "port 0"),
    ],
)
def test_refused_urls_say_why(url, problem):
    refused = rules.parse_url(url)
    assert isinstance(refused, str) and problem in refused, refused


def test_an_error_text_is_one_bounded_line_without_control_characters():
    # A receiver's answer is quoted in it: PostgreSQL refuses NUL in text, and the batch's write failed.
    assert rules.error_text("HTTP 500: bad\x00thing") == "HTTP 500: bad\ufffdthing"
    assert rules.error_text("a\x01b\x07c\x1bd") == "a\ufffdb\ufffdc\ufffdd"
    assert rules.error_text("  HTTP 500:\r\n\tline two\x0b\x0c end ") == "HTTP 500: line two end"
    assert rules.error_text("x" * 600) == "x" * 500
    assert rules.error_text("\x00" * 600) == "\ufffd" * 500
    assert all(ord(c) >= 32 for c in rules.error_text("".join(map(chr, range(128)))))


def test_the_payload_carries_the_delivery_id_event_time_account_and_plain_json_data():
    created = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    data = {"account_id": 7, "volume": Decimal("0.10"), "at": created, "symbols": ("EURUSD",)}
    payload = rules.payload("d-1", "trade.filled", created, data)

    assert payload == {
        "id": "d-1",
        "event": "trade.filled",
        "created_at": "2026-12-01T09:30:00+00:00",
        "account_id": 7,
        "data": {
            "account_id": 7,
            "volume": "0.10",
            "at": "2026-12-01T09:30:00+00:00",
            "symbols": ["EURUSD"],
        },
    }
    assert "account_id" not in rules.payload("d-2", "guard.warning", created, {"note": "x"})
    body = rules.body_bytes(payload)
    assert json.loads(body) == payload
    assert body == rules.body_bytes(json.loads(body)), "the same bytes on every attempt"


def test_the_headers_a_receiver_gets():
    headers = rules.headers(delivery_id="d-1", event="alert.pending", timestamp=123, signature="ab")
    assert headers == {
        "Content-Type": "application/json",
        "User-Agent": "TradeGuard-Webhook/1",
        "X-Timestamp": "123",
        "X-Signature": "ab",
        "X-TradeGuard-Delivery": "d-1",
        "X-TradeGuard-Event": "alert.pending",
    }


def test_the_events_the_issue_asks_for_are_all_there_once():
    wanted = {
        "guard.warning",
        "alert.pending",
        "alert.cancelled",
        "alert.executed",
        "alert.failed",
        "account.halted",
        "account.resumed",
        "market.blocked",
        "market.unblocked",
        "trade.filled",
        "trade.rejected",
        "trade.closed",
        "breaker.opened",
    }
    assert wanted <= set(ALL_EVENTS)
    assert len(ALL_EVENTS) == len(set(ALL_EVENTS))
