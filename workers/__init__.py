"""Celery workers: thin tasks that open a database session and call into shared/."""
