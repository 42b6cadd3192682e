"""Terminal URLs: what each one means, its one canonical spelling, and whether the operator declared it.

Terminals are operator infrastructure. An RPyC terminal server is a Python process TradeGuard sends
work to, so which ones the workers may reach is the operator's decision (`TRADEGUARD_TERMINALS`), not an
account owner's: an account's `terminal_url` must be one of the declared terminals, and the gateway
refuses to connect to any other, whatever the database says.

Pure functions: no I/O, no settings. `canonical_terminal_url` is the one parser; everything else
compares canonical forms, so `SIM://LocalHost:18812/` and `sim://localhost` are the same terminal.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from shared.mt5.errors import InvalidTerminalUrl, TerminalNotDeclared

SCHEMES = ("mt5", "mt5linux", "sim")
DEFAULT_RPYC_PORT = 18812  # mt5linux's and the `terminal` process's default
MAX_URL_LENGTH = 255

# A DNS host name (RFC 1123): dot-separated labels of letters, digits and inner hyphens, 1 to 63
# characters each, 253 in all. Anything else (spaces, underscores, non-ASCII) is refused rather than
# IDNA-encoded: operators name their hosts in ASCII, and two spellings of one host must not slip past the
# allow-list as two different hosts.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _canonical_host(host: str) -> str:
    """`host` in its one spelling: an IP address compressed (`[0:0::1]` is `::1`), a name lower-case.
    Raises InvalidTerminalUrl for anything else: a name whose last label starts with a digit (`0x7f000001`,
    `10.1` read by the resolver as addresses), an IPv6 zone (`%eth0`), non-LDH characters."""
    if len(host) > 253:
        raise InvalidTerminalUrl("host name longer than 253 characters")
    if "%" not in host:
        try:
            return ipaddress.ip_address(host).compressed
        except ValueError:
            pass
    labels = host.split(".")
    if all(_LABEL.match(label) for label in labels) and not labels[-1][:1].isdigit():
        return host
    raise InvalidTerminalUrl(f"{host!r} is not a valid host name or IP address")


# Cached: every terminal connection asks (the allow-list check, then the connector), a reconciling worker
# thousands of times per cycle, for the few URLs of its deployment; uncached it was 35 us a time.
@functools.lru_cache(maxsize=4096)
def canonical_terminal_url(url: str) -> str:
    """The one spelling of `url`: lower-case scheme and host, the port always written (18812 when a
    `sim://host` leaves it out), nothing else. Raises InvalidTerminalUrl saying what is wrong.

    - `mt5://`: the MetaTrader5 package on the worker's own machine (Windows);
    - `mt5linux://host:port`: the package in a remote Python, over RPyC (the mt5linux approach);
    - `sim://`: the simulated terminal inside the worker process;
    - `sim://host[:port]`: the simulated terminal served by the `terminal` process.
    """
    if not isinstance(url, str) or not url:
        raise InvalidTerminalUrl("the terminal URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidTerminalUrl(f"the terminal URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidTerminalUrl("the terminal URL may contain printable ASCII characters only, no spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidTerminalUrl(f"invalid terminal URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidTerminalUrl("the scheme must be one of " + ", ".join(f"{s}://" for s in SCHEMES))
    if parts.username is not None or parts.password is not None:
        raise InvalidTerminalUrl("a terminal URL carries no user name or password")
    if parts.path not in ("", "/") or "?" in url or "#" in url:
        raise InvalidTerminalUrl("a terminal URL has no path, query or fragment: scheme://host:port")
    host = (parts.hostname or "").lower()
    if not parts.netloc:
        if scheme == "mt5linux":
            raise InvalidTerminalUrl("mt5linux:// needs a host and a port, e.g. mt5linux://127.0.0.1:18812")
        return f"{scheme}://"
    if scheme == "mt5":
        raise InvalidTerminalUrl("mt5:// takes no host: it is the MetaTrader5 package on the worker itself")
    if not host:
        raise InvalidTerminalUrl("the terminal URL has a port but no host")
    host = _canonical_host(host)
    if port is None:
        if scheme == "mt5linux":
            raise InvalidTerminalUrl("mt5linux:// needs a port, e.g. mt5linux://127.0.0.1:18812")
        port = DEFAULT_RPYC_PORT
    if not 0 < port < 65536:
        raise InvalidTerminalUrl(f"port {port} is out of range")
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def declared_terminals(urls: Iterable[str]) -> frozenset[str]:
    """The canonical forms of the operator's list. Raises InvalidTerminalUrl naming a bad entry."""
    declared = set()
    for url in urls:
        try:
            declared.add(canonical_terminal_url(url))
        except InvalidTerminalUrl as exc:
            raise InvalidTerminalUrl(f"declared terminal {url!r}: {exc}") from None
    return frozenset(declared)


def require_declared(url: str, declared: frozenset[str]) -> str:
    """`url`'s canonical form when the operator declared that terminal; TerminalNotDeclared otherwise
    (InvalidTerminalUrl when it is not a terminal URL at all)."""
    canonical = canonical_terminal_url(url)
    if canonical not in declared:
        raise TerminalNotDeclared(
            f"{canonical} is not one of the terminals the operator declared (TRADEGUARD_TERMINALS)"
        )
    return canonical


def terminal_url_problem(url: str, declared: frozenset[str]) -> str | None:
    """Why an account may not use `url` as its terminal, or None when it may."""
    try:
        require_declared(url, declared)
    except (InvalidTerminalUrl, TerminalNotDeclared) as exc:
        return str(exc)
    return None
