"""TradeGuard's domain: models and the rules used by both the web API and the workers.

Nothing in this package imports Flask request objects, `web` or `workers`: web/ and workers/ call in
here. The one piece of Celery it knows is a client that sends tasks by name (`shared.core.queue`).
"""
