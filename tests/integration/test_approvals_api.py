"""POST/GET /api/v1/approvals: one decision per signal, only by its owner, never on an expired signal."""

from datetime import timedelta

import pytest
import sqlalchemy as sa

from shared.core.db import utcnow
from shared.models import Approval, AuditLog, Signal

GOOD = {
    "instrument": "GBPUSD",
    "side": "sell",
    "volume": "0.5",
    "price": "1.2500",
    "sl": "1.2600",
    "tp": "1.2300",
}


@pytest.fixture
def world(api):
    world = api.setup()
    world["signal"] = api.send_signal(world["client"], GOOD).json
    return world


def decide(api, world, decision="approve", **extra):
    body = {"signal_id": world["signal"]["id"], "decision": decision, **extra}
    return api.http.post("/api/v1/approvals", json=body, headers=world["user"]["headers"])


def test_approving_moves_the_signal_to_approved_and_is_audited(api, world, db_session):
    response = decide(api, world, "approve", reason="looks right")
    assert response.status_code == 201
    body = response.json
    assert (body["signal_id"], body["decision"], body["reason"], body["signal_status"]) == (
        world["signal"]["id"],
        "approve",
        "looks right",
        "approved",
    )
    assert body["user_id"] == world["user"]["id"]
    signal = api.http.get(f"/api/v1/signals/{world['signal']['id']}", headers=world["user"]["headers"]).json
    assert signal["status"] == "approved" and signal["decided_at"] is not None
    audit = db_session.scalars(sa.select(AuditLog).where(AuditLog.action == "signal.approved")).one()
    assert (audit.actor_id, audit.target_id, audit.meta["approval_id"]) == (
        world["user"]["id"],
        world["signal"]["id"],
        body["id"],
    )


def test_rejecting_moves_the_signal_to_rejected(api, world, db_session):
    response = decide(api, world, "reject", reason="news in 5 minutes")
    assert response.status_code == 201 and response.json["signal_status"] == "rejected"
    assert db_session.get(Signal, world["signal"]["id"]).status.value == "rejected"


@pytest.mark.parametrize(
    ("first", "second"), [("approve", "reject"), ("approve", "approve"), ("reject", "approve")]
)
def test_a_second_decision_is_409_and_changes_nothing(api, world, db_session, first, second):
    assert decide(api, world, first).status_code == 201
    response = decide(api, world, second)
    assert response.status_code == 409
    assert "already decided" in response.json["error"]["message"]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Approval)) == 1


def test_deciding_an_expired_signal_is_409(api, world, db_session):
    from shared.signals.expiry import expire_due_signals

    db_session.get(Signal, world["signal"]["id"]).expires_at = utcnow() - timedelta(seconds=1)
    db_session.flush()
    assert expire_due_signals(db_session) == [world["signal"]["id"]]
    response = decide(api, world, "approve")
    assert response.status_code == 409
    assert response.json["error"]["fields"] == {"signal_id": ["expired"]}
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Approval)) == 0


def test_a_signal_past_its_ttl_is_refused_even_before_the_sweep_marks_it(api, world, db_session):
    db_session.get(Signal, world["signal"]["id"]).expires_at = utcnow() - timedelta(milliseconds=1)
    db_session.commit()
    response = decide(api, world, "approve")
    assert response.status_code == 409 and "expired" in response.json["error"]["message"]
    assert db_session.get(Signal, world["signal"]["id"]).status.value == "pending"


def test_another_users_signal_is_404_and_not_decided(api, world, db_session):
    stranger = api.user()
    response = api.http.post(
        "/api/v1/approvals",
        json={"signal_id": world["signal"]["id"], "decision": "approve"},
        headers=stranger["headers"],
    )
    assert response.status_code == 404
    assert db_session.get(Signal, world["signal"]["id"]).status.value == "pending"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "approve"}, "signal_id"),
        ({"signal_id": "1", "decision": "approve"}, "signal_id"),
        ({"signal_id": 10**12, "decision": "approve"}, "signal_id"),
        ({"signal_id": 1, "decision": "maybe"}, "decision"),
        ({"signal_id": 1}, "decision"),
        ({"signal_id": 1, "decision": "approve", "reason": "x" * 501}, "reason"),
        ({"signal_id": 1, "decision": "approve", "force": True}, "force"),
    ],
)
def test_invalid_decisions_are_422_naming_the_field(api, world, db_session, body, field):
    response = api.http.post("/api/v1/approvals", json=body, headers=world["user"]["headers"])
    assert response.status_code == 422
    assert field in response.json["error"]["fields"]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Approval)) == 0


def test_unknown_signal_is_404(api, world):
    response = api.http.post(
        "/api/v1/approvals",
        json={"signal_id": 999999, "decision": "approve"},
        headers=world["user"]["headers"],
    )
    assert response.status_code == 404 and "999999" in response.json["error"]["message"]


def test_owners_list_and_read_their_approvals_only(api, world):
    approval = decide(api, world, "approve").json
    headers = world["user"]["headers"]
    listing = api.http.get("/api/v1/approvals", headers=headers).json
    assert listing["total"] == 1 and listing["items"][0]["id"] == approval["id"]
    assert api.http.get(f"/api/v1/approvals/{approval['id']}", headers=headers).json == approval

    stranger = api.user()
    assert api.http.get(f"/api/v1/approvals/{approval['id']}", headers=stranger["headers"]).status_code == 404
    assert api.http.get("/api/v1/approvals", headers=stranger["headers"]).json["total"] == 0


def test_approvals_need_a_bearer_token(api, world):
    response = api.http.post(
        "/api/v1/approvals", json={"signal_id": world["signal"]["id"], "decision": "approve"}
    )
    assert response.status_code == 401
