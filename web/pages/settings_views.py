"""The account's risk settings as a form, and the owner's webhooks."""

from __future__ import annotations
