"""Metrics: the duration of every Celery task, recorded by the workers (task_durations), and what
/metrics reads (queries)."""
