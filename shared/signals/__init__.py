"""Signals from strategy clients: the rules they must follow, authenticating the client, ingest (and its
Postgres batching), reading, the owner's approvals, and expiry.
"""
