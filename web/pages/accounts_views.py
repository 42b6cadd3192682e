"""Accounts (sync, equity, drawdown bars, guard state, the alert countdown), alerts history and the
equity chart."""

from __future__ import annotations
