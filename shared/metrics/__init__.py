"""Task metrics: the duration of every Celery task, recorded by the workers for /metrics."""
