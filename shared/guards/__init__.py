"""Risk guards: drawdown, margin and market guards, alerts and the auto-close; pre-trade risk limits."""
