"""Benchmarks: scripts that print figures (run them with PYTHONPATH=. from the repository root)."""
