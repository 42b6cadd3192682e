"""What TradeGuard's features need of a terminal, and of an account to open one.

Execution and reconciliation are written against these protocols rather than against `Gateway` and the
`accounts` row, so that each takes whatever opens a terminal (`workers.runtime.open_terminal` in the
workers, a stand-in in the tests) and whichever form of the account it holds: the row itself, or
reconciliation's copy detached from any session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from shared.mt5.types import AccountSnapshot, AccountState, Deal, OrderResult, Position, Quote, SymbolSpec


class TerminalAccount(Protocol):
    """What opening an account's terminal reads of the account: where the terminal is, the login, server
    and encrypted password to log in with, and the id that names the account in errors. Both
    `shared.models.Account` and `shared.reconciliation.sync.AccountToSync` are one."""

    # Properties, not plain attributes: read-only is enough, and it admits frozen dataclasses.
    @property
    def id(self) -> int: ...
    @property
    def terminal_url(self) -> str: ...
    @property
    def login(self) -> int: ...
    @property
    def server(self) -> str: ...
    @property
    def credentials_encrypted(self) -> bytes: ...


class TerminalPort(Protocol):
    """The part of `shared.mt5.gateway.Gateway` that execution, reconciliation and the guards use."""

    def account(self) -> AccountSnapshot: ...
    def symbol(self, name: str) -> SymbolSpec: ...
    def quote(self, name: str) -> Quote: ...
    def symbol_and_quote(self, name: str) -> tuple[SymbolSpec, Quote]: ...
    def positions(self, symbol: str | None = None) -> list[Position]: ...
    def deals(self, date_from: datetime, date_to: datetime) -> list[Deal]: ...
    def deals_for_positions(self, position_ids: list[int]) -> dict[int, list[Deal]]: ...
    def read_account(self, deals_from: datetime, deals_to: datetime) -> AccountState: ...
    def send_order(self, request: Mapping[str, Any]) -> OrderResult: ...
    def market_order_request(
        self,
        *,
        symbol: str,
        side: str,
        volume: Decimal,
        price: Decimal,
        sl: Decimal | None,
        tp: Decimal | None,
        deviation_points: int,
        magic: int,
        comment: str,
        position: int | None = None,
    ) -> dict[str, Any]: ...


# Opens the account's terminal, logged in, for the length of a `with` block.
OpenTerminal = Callable[[TerminalAccount], AbstractContextManager[TerminalPort]]


if TYPE_CHECKING:
    from shared.mt5.gateway import Gateway

    # mypy checks here that the gateway still is a TerminalPort (the workers' openers, in
    # workers/runtime.py, yield Gateways to code that expects TerminalPorts).
    _GATEWAY_IS_A_TERMINAL_PORT: type[TerminalPort] = Gateway
