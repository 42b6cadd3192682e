"""Reconciliation: the pure rules (matching positions to trades, divergences, closes, equity figures), the
sync that reads terminals and writes what it found, and which accounts are due.
"""
