"""TradeGuard's domain: models and the rules used by both the web API and the workers.

Nothing in this package imports Flask request objects or Celery: web/ and workers/ call in here.
"""
