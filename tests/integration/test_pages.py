"""The owner's pages through the app (Postgres): signing in with a cookie of the pages' own, CSRF on
every form, the pending signals and deciding them, and nobody else's rows. The browser tests
(test_pages_browser.py) drive the same pages in Chromium against the running processes."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from shared.core.queue import EXECUTE_SIGNAL
from shared.models import Approval, Decision, Signal
from tests.conftest import GOOD_SIGNAL

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def _token(html: str) -> str:
    found = TOKEN.search(html)
    assert found, html[:500]
    return found.group(1)


def sign_in(http: Any, email: str, password: str = "correct horse", next_path: str = "/signals") -> Any:
    form = http.get("/login")
    return http.post(
        "/login",
        data={
            "email": email,
            "password": password,
            "next": next_path,
            "csrf_token": _token(form.get_data(as_text=True)),
        },
    )


@pytest.fixture
def owner(api: Any) -> dict[str, Any]:
    world = api.setup()
    world["signal_id"] = api.send_signal(world["client"], {**GOOD_SIGNAL, "comment": uuid.uuid4().hex}).json[
        "id"
    ]
    return world


def test_pages_send_a_stranger_to_sign_in_and_back(client, owner):
    response = client.get("/signals")
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/signals"
    page = client.get("/login?next=/signals").get_data(as_text=True)
    assert 'name="next" value="/signals"' in page
    # Only a path of this site is a place to go back to.
    assert 'name="next" value="/signals"' in client.get("/login?next=https://evil.example/").get_data(
        as_text=True
    )
    assert 'name="next" value="/signals"' in client.get("/login?next=//evil.example/x").get_data(as_text=True)
    assert 'name="next" value="/signals"' in client.get("/login?next=/%5Cevil.example/x").get_data(
        as_text=True
    )
    # A page with a query string comes back whole.
    response = client.get("/trades?state=filled&account_id=1")
    assert response.headers["Location"] == "/login?next=/trades%3Fstate%3Dfilled%26account_id%3D1"
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert 'name="next" value="/trades?state=filled&amp;account_id=1"' in page


def test_signing_in_sets_an_http_only_same_site_cookie_for_the_pages_alone(client, owner):
    response = sign_in(client, owner["user"]["email"])
    assert response.status_code == 302 and response.headers["Location"] == "/signals"
    cookie = next(
        value for value in response.headers.getlist("Set-Cookie") if value.startswith("tg_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # plain HTTP here
    assert client.get("/signals").status_code == 200
    # The cookie is not an API credential, and an API token is not a page session.
    assert client.get("/api/v1/signals").status_code == 401
    client.delete_cookie("tg_session")
    headers = owner["user"]["headers"]
    assert client.get("/signals", headers=headers).status_code == 302


def test_the_cookie_is_secure_behind_tls(client, owner):
    form = client.get("/login", base_url="https://localhost")
    response = client.post(
        "/login",
        base_url="https://localhost",
        data={
            "email": owner["user"]["email"],
            "password": "correct horse",
            "csrf_token": _token(form.get_data(as_text=True)),
        },
    )
    cookie = next(
        value for value in response.headers.getlist("Set-Cookie") if value.startswith("tg_session=")
    )
    assert "Secure" in cookie


def test_a_wrong_password_is_401_with_the_form_again_and_no_session(client, owner):
    response = sign_in(client, owner["user"]["email"], password="wrong")
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)
    assert not any(value.startswith("tg_session=") for value in response.headers.getlist("Set-Cookie"))


def test_forms_without_the_csrf_token_are_refused(client, owner, db_session):
    client.get("/login")
    refused = client.post("/login", data={"email": owner["user"]["email"], "password": "correct horse"})
    assert refused.status_code == 403
    assert sign_in(client, owner["user"]["email"]).status_code == 302
    for token in ("", "0" * 64):
        response = client.post(
            f"/signals/{owner['signal_id']}/decision", data={"decision": "approve", "csrf_token": token}
        )
        assert response.status_code == 403
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Approval)) == 0
    assert client.post("/logout").status_code == 403


def test_the_pending_signals_show_what_waits_and_approving_sends_the_order(
    client, owner, db_session, sent_tasks
):
    sign_in(client, owner["user"]["email"])
    page = client.get("/signals").get_data(as_text=True)
    row = re.search(rf'<tr id="signal-{owner["signal_id"]}".*?</tr>', page, re.S).group(0)
    for shown in ("strategy", "EURUSD", "buy", "0.1", "1.1", "1.095", "1.11"):
        assert f"<td>{shown}</td>" in row or f">{shown}<" in row, shown
    assert 'class="countdown" data-deadline="' in row
    response = client.post(
        f"/signals/{owner['signal_id']}/decision", data={"decision": "approve", "csrf_token": _token(page)}
    )
    assert response.status_code == 302 and response.headers["Location"] == "/signals?notice=approved"
    approval = db_session.scalar(sa.select(Approval).where(Approval.signal_id == owner["signal_id"]))
    assert approval.decision == Decision.APPROVE and approval.user_id == owner["user"]["id"]
    assert [(task.name, task.args) for task in sent_tasks.sent] == [(EXECUTE_SIGNAL, [owner["signal_id"]])]
    after = client.get("/signals?notice=approved").get_data(as_text=True)
    assert "Approved: the order is on its way." in after
    assert f'id="signal-{owner["signal_id"]}"' not in after
    assert "Nothing waits for a decision" in client.get("/signals/table").get_data(as_text=True)
    # Deciding again: already decided, nothing more sent.
    again = client.post(
        f"/signals/{owner['signal_id']}/decision", data={"decision": "reject", "csrf_token": _token(page)}
    )
    assert again.headers["Location"] == "/signals?notice=decided"
    assert len(sent_tasks.sent) == 1


def test_rejecting_keeps_the_reason_and_sends_nothing(client, owner, db_session, sent_tasks):
    sign_in(client, owner["user"]["email"])
    token = _token(client.get("/signals").get_data(as_text=True))
    response = client.post(
        f"/signals/{owner['signal_id']}/decision",
        data={"decision": "reject", "reason": "  too close to the news  ", "csrf_token": token},
    )
    assert response.headers["Location"] == "/signals?notice=rejected"
    approval = db_session.scalar(sa.select(Approval).where(Approval.signal_id == owner["signal_id"]))
    assert (approval.decision, approval.reason) == (Decision.REJECT, "too close to the news")
    assert sent_tasks.sent == []
    bad = client.post(
        f"/signals/{owner['signal_id']}/decision", data={"decision": "maybe", "csrf_token": token}
    )
    assert bad.status_code == 400


def test_nobody_sees_or_decides_another_users_signals(api, client, owner, db_session):
    stranger = api.setup()
    sign_in(client, stranger["user"]["email"])
    page = client.get("/signals").get_data(as_text=True)
    assert f'id="signal-{owner["signal_id"]}"' not in page and "Nothing waits for a decision" in page
    response = client.post(
        f"/signals/{owner['signal_id']}/decision", data={"decision": "approve", "csrf_token": _token(page)}
    )
    assert response.headers["Location"] == "/signals?notice=missing"
    assert db_session.get(Signal, owner["signal_id"]).status.value == "pending"


def test_what_strategies_and_owners_named_is_escaped(api, client, owner, db_session):
    client_row = api.strategy_client(owner["user"], owner["account"]["id"])
    db_session.execute(
        sa.text("UPDATE strategy_clients SET name = :name WHERE id = :id"),
        {"name": "<script>alert(1)</script>", "id": client_row["id"]},
    )
    db_session.commit()
    api.send_signal({**client_row}, {**GOOD_SIGNAL, "comment": "x"})
    sign_in(client, owner["user"]["email"])
    page = client.get("/signals").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_an_expired_signal_is_not_listed(client, owner, db_session):
    db_session.execute(
        sa.update(Signal)
        .where(Signal.id == owner["signal_id"])
        .values(expires_at=sa.func.now() - sa.text("interval '1 second'"))
    )
    db_session.commit()
    sign_in(client, owner["user"]["email"])
    assert f'id="signal-{owner["signal_id"]}"' not in client.get("/signals/table").get_data(as_text=True)


def test_signing_out_ends_the_page_session(client, owner):
    sign_in(client, owner["user"]["email"])
    token = _token(client.get("/signals").get_data(as_text=True))
    response = client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert client.get("/signals").status_code == 302


def test_errors_on_the_pages_are_pages_with_their_status_and_message(api, client, owner):
    client.get("/login")
    refused = client.post("/login", data={"email": owner["user"]["email"], "password": "correct horse"})
    assert (refused.status_code, refused.mimetype) == (403, "text/html")
    page = refused.get_data(as_text=True)
    assert "<h1>Refused</h1>" in page and "security token is missing or stale" in page
    stranger = api.setup()
    sign_in(client, owner["user"]["email"])
    missing = client.get(f"/risk?account_id={stranger['account']['id']}")
    assert (missing.status_code, missing.mimetype) == (404, "text/html")
    assert "<h1>Not found</h1>" in missing.get_data(as_text=True)
    # The JSON API keeps its envelope.
    api_missing = client.get(
        f"/api/v1/accounts/{stranger['account']['id']}", headers=owner["user"]["headers"]
    )
    assert api_missing.status_code == 404 and api_missing.json["error"]["code"] == "not_found"
