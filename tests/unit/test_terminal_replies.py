"""What an RPyC terminal's reply may be: JSON text of [result, error] pairs, nothing else (issue 10)."""

from __future__ import annotations

import json
import pickle
from collections import namedtuple
from typing import Any

import pytest

from shared.mt5.errors import TerminalProtocolError
from shared.mt5.wire import _REMOTE_HELPER, decode_answers, encode_calls

Position = namedtuple("Position", "ticket symbol volume sl")


def remote_run(module: Any, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> Any:
    """What `_tradeguard_calls` answers in the terminal's Python (exec'd here, as the classic server
    would), for `calls` made on `module`."""
    namespace: dict[str, Any] = {"mt5": module}
    exec(_REMOTE_HELPER, namespace)  # noqa: S102 - the helper's own source
    return namespace["_tradeguard_calls"](encode_calls(calls))


class FakeTerminal:
    SESSION_PER_THREAD = True

    def positions_get(self) -> tuple[Position, ...]:
        return (Position(1, "EURUSD", 0.1, 0.0), Position(2, "GBPUSD", 1.25, 1.2345))

    def account_info(self) -> dict[str, Any]:
        return {"login": 1001, "equity": 10000.5}

    def last_error(self) -> tuple[int, str]:
        return (1, "Success")


def test_lists_of_structs_travel_as_columns_and_come_back_as_dicts_with_fractions_as_text() -> None:
    reply = remote_run(FakeTerminal(), [("positions_get", (), {}), ("account_info", (), {})])
    assert '"$columns": ["ticket", "symbol", "volume", "sl"]' in reply  # the names once, not per row
    (positions, error), (account, _) = decode_answers(reply, 2)
    assert error is None
    assert positions == [
        {"ticket": 1, "symbol": "EURUSD", "volume": "0.1", "sl": "0.0"},
        {"ticket": 2, "symbol": "GBPUSD", "volume": "1.25", "sl": "1.2345"},
    ]
    assert account == {"login": 1001, "equity": "10000.5"}


def test_a_failed_call_comes_back_with_its_error_pair() -> None:
    answers = decode_answers(json.dumps([[None, [-2, "Invalid params"]]]), 1)
    assert answers == [(None, (-2, "Invalid params"))]


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (pickle.dumps([(True, None)]), "bytes instead of JSON text"),  # what a pickling terminal sends
        (object(), "object instead of JSON text"),  # what an RPyC proxy of a remote object looks like
        ("not json", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),  # nested past the parser's depth
        (json.dumps({"answers": []}), "not a list of one answer per call"),
        (json.dumps([[True, None], [True, None]]), "not a list of one answer per call"),  # 2 for 1 call
        (json.dumps([[True]]), "not a [result, error] pair"),
        (json.dumps([[None, "boom"]]), "not a [code, message] pair"),
        (json.dumps([[None, [True, "x"]]]), "not a [code, message] pair"),  # a bool is no error code
        (json.dumps([[{"$columns": ["a", 1], "$rows": []}, None]]), "$columns"),
        (json.dumps([[{"$columns": ["a"], "$rows": [[1, 2]]}, None]]), "does not have its 1 columns"),
        (json.dumps([[{"$columns": ["a"], "$rows": [[1]], "x": 1}, None]]), "$columns"),
    ],
)
def test_anything_else_is_a_protocol_error(reply: Any, words: str) -> None:
    with pytest.raises(TerminalProtocolError) as raised:
        decode_answers(reply, 1)
    assert words in str(raised.value)
