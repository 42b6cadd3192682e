"""The ground floor, below the models: settings, the database session and column types, the error tree,
encryption and signing, locks, request coalescing, the task-queue seam and what a process keeps on its
Flask app. Imports nothing else of TradeGuard's packages (the task queue reads the top-level
`celeryconfig` by name).
"""
