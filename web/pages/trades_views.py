"""Open positions with attribution, the trades list (filterable) and each trade's timeline."""

from __future__ import annotations
