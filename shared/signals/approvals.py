"""Approvals: the owner's approve/reject decision on a pending signal."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from shared.audit import trail
from shared.core.db import DbSession, utcnow
from shared.core.errors import Conflict
from shared.core.ownership import get_owned
from shared.core.pagination import Page, paginate
from shared.models import Approval, Decision, Signal, SignalStatus, User
from shared.signals.queries import get_own_signal
from shared.signals.rules import is_expired


def _refusal(signal: Signal) -> Conflict:
    if signal.status == SignalStatus.EXPIRED or signal.status == SignalStatus.PENDING:
        return Conflict(f"signal {signal.id} has expired", fields={"signal_id": ["expired"]})
    return Conflict(
        f"signal {signal.id} was already decided ({signal.status.value})",
        fields={"signal_id": ["already decided"]},
    )


def decide(
    session: DbSession, user: User, *, signal_id: int, decision: Decision, reason: str | None
) -> Approval:
    """Record the decision and move the signal to approved or rejected.

    The status change is a conditional UPDATE (pending and not yet expired), so two decisions racing
    on one signal, or a decision racing the expiry sweep, leave exactly one winner.
    """
    now = utcnow()
    signal = get_own_signal(session, user, signal_id)
    if signal.status != SignalStatus.PENDING or is_expired(signal, now):
        raise _refusal(signal)

    new_status = SignalStatus.APPROVED if decision == Decision.APPROVE else SignalStatus.REJECTED
    result = session.execute(
        sa.update(Signal)
        .where(Signal.id == signal.id, Signal.status == SignalStatus.PENDING, Signal.expires_at > now)
        .values(status=new_status, decided_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(signal)
        raise _refusal(signal)
    session.refresh(signal)

    approval = Approval(signal_id=signal.id, user_id=user.id, decision=decision, reason=reason)
    try:
        with session.begin_nested():
            session.add(approval)
            session.flush()
    except IntegrityError:
        raise _refusal(signal) from None
    trail.record(
        session,
        actor_type=trail.USER,
        actor_id=user.id,
        action=f"signal.{new_status.value}",
        target_type="signal",
        target_id=signal.id,
        meta={"approval_id": approval.id, "decision": decision.value, "reason": reason},
    )
    return approval


def get_own_approval(session: DbSession, user: User, approval_id: int) -> Approval:
    return get_owned(session, Approval, approval_id, user.id, name="approval")


def list_own_approvals(session: DbSession, user: User, *, page: int, per_page: int) -> Page[Approval]:
    statement = sa.select(Approval).where(Approval.user_id == user.id).order_by(Approval.id.desc())
    return paginate(session, statement, page=page, per_page=per_page)
