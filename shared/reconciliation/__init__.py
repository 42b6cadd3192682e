"""Reconciliation: the pure rules (matching positions to trades, divergences, closes, equity figures) and
the circuit breaker's, the sync that reads terminals and writes what it found, which accounts are due
(schedule), and what owners read of it (queries).
"""
