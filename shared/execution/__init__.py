"""Executing approved signals: the pure rules (retcodes, pre-trade checks), the service that sends an order
at most once, and dispatching execution tasks.
"""
