"""The pure rules of webhooks: signing, the retry schedule, which URLs and addresses are allowed, and the
payload. No I/O, no clock of their own (`webhooks` and `delivery` do the I/O)."""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from shared.core import signing

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# --- signing --------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """X-Signature: the hex HMAC-SHA256 of `"{timestamp}.{body}"` with the webhook's secret. The same
    convention strategy clients sign signals with, so a receiver verifies both the same way."""
    return signing.sign(secret, timestamp, body)


# --- retries --------------------------------------------------------------------------------------

# Seconds to wait after each failed attempt: 10 s, 30 s, 1, 2, 5, 10 min, then every 15 min; 3820 s
# (about an hour) from the first attempt to the last, ten attempts in all.
RETRY_DELAYS: tuple[float, ...] = (10, 30, 60, 120, 300, 600, 900, 900, 900)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
# The last_error of a delivery still pending after its last attempt: that attempt's result was never
# recorded (its worker died in it), and no attempt comes after it.
ATTEMPTS_USED_UP = f"failed: all {MAX_ATTEMPTS} attempts made, the last one's result was never recorded"


def retry_delay(attempt: int, scale: float = 1.0) -> float | None:
    """How long to wait after attempt number `attempt` (1-based) failed before the next, or None when
    that was the last. `scale` shrinks the schedule (TRADEGUARD_WEBHOOK_RETRY_SCALE, for tests only)."""
    if attempt < 1 or attempt > len(RETRY_DELAYS):
        return None
    return RETRY_DELAYS[attempt - 1] * scale


# --- addresses ------------------------------------------------------------------------------------

# Cloud instance metadata (AWS, GCP, Azure, OpenStack; AWS's IPv6 one): credentials live behind these.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
# Carrier-grade NAT (RFC 6598): neither private nor global to Python, and never a public receiver.
CGNAT = ipaddress.ip_network("100.64.0.0/10")
# NAT64 (RFC 6052): the IPv4 address is the last 32 bits.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo's server, NAT64), which is where a
    packet to it may end up."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address: where the tunnel delivers
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal_reason(address: str | IpAddress, allow_private: bool) -> str | None:
    """Why a webhook may not be sent to `address`, or None when it may.

    Never: unspecified, multicast, reserved addresses, or the cloud metadata service. Unless
    `allow_private` (TRADEGUARD_WEBHOOK_ALLOW_PRIVATE): loopback, private, link-local, CGNAT or any other
    address that is not globally routable. An IPv6 address carrying an IPv4 one is judged by both."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            # The packets end up at the IPv4 address: that one decides (Python calls ::ffff:0:0/96
            # "reserved" whatever it carries).
            reason = refusal_reason(embedded, allow_private)
            return None if reason is None else f"{reason} (carried in {ip})"
    if ip in METADATA_ADDRESSES:
        return "the cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_loopback:  # before `reserved`: ::1 is inside the reserved ::/8
        return None if allow_private else "a loopback address"
    if ip.is_reserved:
        return "a reserved address"
    if allow_private:
        return None
    if ip.is_link_local:
        return "a link-local address"
    if ip in CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def is_refused_address(address: str | IpAddress, allow_private: bool) -> bool:
    return refusal_reason(address, allow_private) is not None


# --- URLs -----------------------------------------------------------------------------------------

MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class Target:
    """Where a webhook's POST goes: the parts of its URL a pinned connection needs."""

    scheme: str  # http | https
    host: str  # as written (lower case), without brackets: what Host and SNI carry
    port: int
    path: str  # path and query, at least "/"


def parse_url(url: str) -> Target | str:
    """The URL's target, or why it is refused (a message for the owner). Only the URL's shape: whether
    its host resolves to an allowed address is `delivery`'s to find out."""
    if len(url) > MAX_URL_LENGTH:
        return f"at most {MAX_URL_LENGTH} characters"
    # Printable ASCII only: the request line is sent as ASCII (http.client cannot send the rest, and every
    # delivery of such a URL would fail), and a right-to-left mark or a look-alike letter can make a URL
    # read as another one in a listing.
    if any(not 33 <= ord(c) <= 126 for c in url):
        return (
            "must not contain spaces, control or non-ASCII characters: percent-encode them (é as %C3%A9), "
            "and write an international host name in its xn-- form"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if port == 0:
        return "port 0 is not a port a receiver can listen on"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would be stored in clear and shown in listings; the signature is how
        # a receiver knows the POST is ours.
        return "must not carry a user name or password"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "must name a host"
    if parts.fragment:
        return "must not have a #fragment (it is never sent)"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, host, port if port is not None else (443 if scheme == "https" else 80), path)


# --- the payload ----------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact, as the API sends decimals
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def jsonable(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` as plain JSON values (decimals as strings, times as ISO text, enums as their values), as
    stored on the delivery row and sent."""
    converted: dict[str, Any] = json.loads(json.dumps(dict(data), default=_json_default))
    return converted


def payload(delivery_id: str, event: str, created_at: datetime, data: Mapping[str, Any]) -> dict[str, Any]:
    """The delivery's body as a dict: the same on every attempt (only X-Timestamp changes)."""
    body: dict[str, Any] = {"id": delivery_id, "event": event, "created_at": created_at.isoformat()}
    if data.get("account_id") is not None:
        body["account_id"] = data["account_id"]
    body["data"] = jsonable(data)
    return body


def body_bytes(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent and signed: compact, keys sorted, ASCII only."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def headers(*, delivery_id: str, event: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "TradeGuard-Webhook/1",
        "X-Timestamp": str(timestamp),
        "X-Signature": signature,
        "X-TradeGuard-Delivery": delivery_id,
        "X-TradeGuard-Event": event,
    }


# The C0 control characters: those that are whitespace become spaces in `error_text`, the others (NUL
# first: PostgreSQL refuses it in text) U+FFFD, as undecodable bytes of an answer do.
_CONTROL_CHARACTERS = dict.fromkeys(range(0x20), "\ufffd")


def error_text(message: str, limit: int = 500) -> str:
    """An error for the last_error column: one line, bounded, without control characters (it quotes the
    receiver's answer: its body, its Location)."""
    return " ".join(message.split()).translate(_CONTROL_CHARACTERS)[:limit]
