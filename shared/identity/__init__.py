"""Who: users, their MT5 accounts, their strategy clients, and the key check that guards the secrets stored
for them.
"""
