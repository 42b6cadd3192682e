"""The audit trail: writing its rows (trail) and reading them (queries)."""
