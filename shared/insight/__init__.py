"""Insight: what an owner looks at after the fact. CSV exports, the equity chart, performance analytics,
one timeline per trade, and the retention that keeps the snapshot history they read bounded."""
