"""What a terminal's messages may cost a worker: bounded time, bounded memory, and a connection that
misbehaved is never reused (issue 10). Against tests/raw_terminal.py, which speaks RPyC's wire protocol
itself and misbehaves on purpose."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.mt5 import convert
from shared.mt5.errors import OrderOutcomeUnknown, TerminalError, TerminalProtocolError, TerminalUnavailable
from shared.mt5.gateway import Gateway
from shared.mt5.pool import ConnectionPool
from shared.mt5.terminals import declared_terminals
from tests.raw_terminal import RawTerminal


@pytest.fixture
def raw(request: pytest.FixtureRequest) -> Iterator[RawTerminal]:
    terminal = RawTerminal(**request.param)
    yield terminal
    terminal.close()


def opened(terminal: RawTerminal, pool: ConnectionPool | None = None, timeout: float = 1.0) -> Gateway:
    return Gateway.open(
        terminal.url,
        declared=declared_terminals([terminal.url]),
        login=1,
        password="x",
        server="S",
        timeout=timeout,
        pool=pool,
    )


def an_order(comment: str) -> dict[str, object]:
    return Gateway.market_order_request(
        symbol="EURUSD", side="buy", volume="0.1", price="1.1", sl=None, tp=None, deviation_points=20,
        magic=1, comment=comment,
    )  # fmt: skip


def window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(hours=1), now


@pytest.mark.parametrize("raw", [{"mode": "stall", "honest": 0}], indirect=True)
def test_a_message_that_never_finishes_frees_a_pooled_call_within_its_timeout(raw: RawTerminal) -> None:
    pool = ConnectionPool()
    gateway = opened(raw, pool)
    started = time.monotonic()
    with pytest.raises(TerminalUnavailable, match="did not finish its message within 1 s"):
        gateway.read_account(*window())
    assert time.monotonic() - started < 3  # it used to wait for ever
    gateway.close()
    assert pool.idle() == 0


@pytest.mark.parametrize("raw", [{"mode": "close_stall"}], indirect=True)
def test_closing_a_connection_whose_terminal_stalls_its_answer_returns(raw: RawTerminal) -> None:
    gateway = opened(raw)
    started = time.monotonic()
    gateway.close()  # an order task's `with` block ends here
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("raw", [{"mode": "huge"}], indirect=True)
def test_a_message_longer_than_a_worker_takes_is_refused_before_it_is_read(raw: RawTerminal) -> None:
    gateway = opened(raw)
    with pytest.raises(TerminalUnavailable, match="more than a message may be"):
        gateway.account()


@pytest.mark.parametrize("raw", [{"mode": "bomb", "bomb_bytes": 300_000_000}], indirect=True)
def test_a_compressed_message_may_not_expand_past_the_limit(raw: RawTerminal) -> None:
    gateway = opened(raw, timeout=20.0)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(TerminalUnavailable, match="expands past"):
        gateway.account()
    # 300 MB would have been inflated (and then decoded); at most the limit's 64 MiB was.
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 150


@pytest.mark.parametrize("raw", [{"mode": "local_ref", "honest": 0}], indirect=True)
def test_a_reply_naming_an_object_of_ours_is_a_failure_and_the_connection_is_dropped(
    raw: RawTerminal,
) -> None:
    pool = ConnectionPool()
    gateway = opened(raw, pool)
    with pytest.raises(TerminalError, match="account_info raised KeyError"):
        gateway.account()  # RPyC fails to decode the reply (there is no such object here)
    gateway.close()
    assert pool.idle() == 0  # never handed to the next account's sync


@pytest.mark.parametrize("raw", [{"mode": "nan"}], indirect=True)
def test_an_order_filled_at_nan_is_not_booked_but_outcome_unknown(raw: RawTerminal) -> None:
    gateway = opened(raw)
    with pytest.raises(OrderOutcomeUnknown, match="malformed"):
        gateway.send_order(an_order("tg-nan"))


@pytest.mark.parametrize("raw", [{"mode": "short"}], indirect=True)
def test_an_order_the_terminal_did_not_answer_is_outcome_unknown(raw: RawTerminal) -> None:
    gateway = opened(raw)
    with pytest.raises(OrderOutcomeUnknown, match="skipped"):
        gateway.send_order(an_order("tg-short"))
    with pytest.raises(TerminalProtocolError, match="skipped"):
        opened(raw).account()


def test_number_text_and_non_finite_numbers_are_refused_before_they_are_cached() -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        convert._dec("NaN")
    with pytest.raises(ValueError, match="a number of 41 characters"):
        convert._dec("1" * 41)
    with pytest.raises(ValueError, match="out of range"):
        convert._dec(10**41)
    with pytest.raises(TypeError, match="a list where a number belongs"):
        convert._dec([1])
    assert convert._dec("1.085") == convert._dec(1.085)


def test_control_never_sends_an_order() -> None:
    from shared.mt5.sim.broker import SimBroker
    from shared.mt5.sim.terminal import SimTerminal

    with Gateway.from_module(SimTerminal(SimBroker(seed=1)), login=1, password="x", server="S") as gateway:
        with pytest.raises(ValueError, match="send_order"):
            gateway.control("order_send", {})
        assert gateway.control("sim_set_latency", 0) is None  # None is returned, not raised
