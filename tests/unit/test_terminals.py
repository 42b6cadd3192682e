"""Terminal URLs: the canonical spelling, host-name validation, and the operator's allow-list."""

import socket

import pytest

from shared.core.config import load_settings
from shared.mt5.errors import InvalidTerminalUrl, TerminalNotDeclared
from shared.mt5.gateway import Gateway
from shared.mt5.terminals import (
    canonical_terminal_url,
    declared_terminals,
    require_declared,
    terminal_url_problem,
)


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("mt5://", "mt5://"),
        ("sim://", "sim://"),
        ("MT5LINUX://Wine-Box.internal:8001", "mt5linux://wine-box.internal:8001"),
        ("sim://127.0.0.1", "sim://127.0.0.1:18812"),  # the terminal process's default port
        ("sim://LocalHost:18812/", "sim://localhost:18812"),
        ("mt5linux://[::1]:18812", "mt5linux://[::1]:18812"),
        ("mt5linux://10.0.0.5:18812", "mt5linux://10.0.0.5:18812"),
        ("mt5linux://[0:0:0:0:0:0:0:1]:18812", "mt5linux://[::1]:18812"),  # one address, one spelling
        ("mt5linux://[::FFFF:7F00:1]:18812", "mt5linux://[::ffff:7f00:1]:18812"),
    ],
)
def test_each_terminal_has_one_canonical_spelling(url, canonical):
    assert canonical_terminal_url(url) == canonical


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://example.com", "scheme must be one of"),
        ("", "empty"),
        ("mt5linux://127.0.0.1", "needs a port"),
        ("mt5linux://", "needs a host and a port"),
        ("mt5linux://:18812", "port but no host"),
        ("mt5://somehost", "takes no host"),
        ("mt5linux://host:99999", "invalid terminal URL"),
        ("sim://日本語テキスト:19012", "printable ASCII"),
        ("sim://exa mple:1", "printable ASCII"),
        ("sim://under_score.example:1", "not a valid host name"),
        ("sim://-leading.example:1", "not a valid host name"),
        ("sim://host.123:1", "not a valid host name"),
        ("sim://0x7f000001:1", "not a valid host name"),  # the resolver reads it as 127.0.0.1
        ("sim://10.1:1", "not a valid host name"),  # and this as 10.0.0.1
        ("mt5linux://[fe80::1%eth0]:1", "not a valid host name"),
        ("sim://h:1?", "no path, query or fragment"),
        ("sim://h:1#", "no path, query or fragment"),
        ("sim://" + "a" * 64 + ":1", "not a valid host name"),
        ("mt5linux://user:pw@host:1", "no user name or password"),
        ("mt5linux://host:1/path", "no path, query or fragment"),
        ("mt5linux://host:1?x=1", "no path, query or fragment"),
        ("mt5linux://host:0", "out of range"),
        ("sim://" + "a." * 130 + "b:1", "longer than"),
    ],
)
def test_a_bad_terminal_url_says_what_is_wrong(url, words):
    with pytest.raises(InvalidTerminalUrl) as raised:
        canonical_terminal_url(url)
    assert words in str(raised.value)


def test_only_declared_terminals_pass_whatever_their_spelling():
    declared = declared_terminals(["sim://127.0.0.1", "mt5linux://wine:8001"])
    assert declared == frozenset({"sim://127.0.0.1:18812", "mt5linux://wine:8001"})
    assert require_declared("SIM://127.0.0.1:18812/", declared) == "sim://127.0.0.1:18812"
    assert terminal_url_problem("mt5linux://WINE:8001", declared) is None
    # Another port, host or scheme of a declared host is another terminal.
    for other in ("sim://127.0.0.1:19013", "mt5linux://127.0.0.1:18812", "sim://wine:8001", "sim://"):
        with pytest.raises(TerminalNotDeclared, match="not one of the terminals the operator declared"):
            require_declared(other, declared)
        assert "TRADEGUARD_TERMINALS" in (terminal_url_problem(other, declared) or "")
    assert "scheme must be one of" in (terminal_url_problem("ftp://wine:8001", declared) or "")


def test_a_bad_declared_terminal_is_named():
    with pytest.raises(InvalidTerminalUrl, match="declared terminal 'sim://bad_host:1'"):
        declared_terminals(["sim://", "sim://bad_host:1"])


def test_the_embedded_simulator_is_declared_when_the_operator_declares_nothing(tmp_path):
    base = {"TRADEGUARD_INSTANCE_DIR": str(tmp_path)}
    assert declared_terminals(load_settings(base).terminal_urls) == {"sim://", "sim://127.0.0.1:18812"}
    moved = {**base, "TRADEGUARD_TERMINAL_HOST": "0.0.0.0", "TRADEGUARD_TERMINAL_PORT": "19000"}  # noqa: S104
    assert declared_terminals(load_settings(moved).terminal_urls) == {"sim://", "sim://127.0.0.1:19000"}
    chosen = {**base, "TRADEGUARD_TERMINALS": " mt5linux://10.0.0.5:18812 , sim://127.0.0.1:18812,"}
    assert load_settings(chosen).terminal_urls == ("mt5linux://10.0.0.5:18812", "sim://127.0.0.1:18812")


def test_the_gateway_refuses_an_undeclared_terminal_before_connecting():
    # A listening socket stands for the terminal: a connection would wait in its backlog, accepted or not.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with pytest.raises(TerminalNotDeclared) as raised:
            Gateway.open(
                f"mt5linux://127.0.0.1:{listener.getsockname()[1]}",
                declared=declared_terminals(["sim://"]),
                login=666,
                password="x",
                server="x",
                timeout=1,
            )
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody connected
            listener.accept()
    assert raised.value.code == "terminal_not_declared" and not raised.value.retryable
