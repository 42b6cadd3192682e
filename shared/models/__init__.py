"""The tables, one module per feature group. Importing this package registers every table on the
metadata (the app and Alembic rely on that), and its names are the one place code imports models from.

Money, prices and volumes are `Numeric`; timestamps are UTC-aware.
"""

from shared.models.audit import AuditLog
from shared.models.enums import Decision, Role, Side, SignalStatus, TradeState
from shared.models.guards import (
    ALERT_STATUSES,
    LIVE_ALERT_STATUSES,
    AccountRisk,
    AlertClose,
    DrawdownAlert,
    GuardState,
    MarketQuote,
)
from shared.models.identity import Account, KeyCheck, StrategyClient, User
from shared.models.metrics import TaskDurationBucket, TaskDurationTotal
from shared.models.monitoring import (
    SNAPSHOT_RESOLUTIONS,
    AccountSync,
    PositionSnapshot,
    ReconciliationLog,
    SnapshotRetention,
)
from shared.models.notifications import DeliveryStatus, Webhook, WebhookDelivery
from shared.models.signals import Approval, Signal
from shared.models.trades import Trade

__all__ = [
    "ALERT_STATUSES",
    "LIVE_ALERT_STATUSES",
    "SNAPSHOT_RESOLUTIONS",
    "Account",
    "AccountRisk",
    "AccountSync",
    "AlertClose",
    "Approval",
    "AuditLog",
    "Decision",
    "DeliveryStatus",
    "DrawdownAlert",
    "GuardState",
    "KeyCheck",
    "MarketQuote",
    "PositionSnapshot",
    "ReconciliationLog",
    "Role",
    "Side",
    "Signal",
    "SignalStatus",
    "SnapshotRetention",
    "StrategyClient",
    "TaskDurationBucket",
    "TaskDurationTotal",
    "Trade",
    "TradeState",
    "User",
    "Webhook",
    "WebhookDelivery",
]
