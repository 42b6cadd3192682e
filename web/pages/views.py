"""Signing in and out, and the pending signals with their Approve and Reject buttons."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Response, abort, make_response, redirect, render_template, request

from shared.core.db import utcnow
from shared.core.errors import Conflict, NotAuthenticated, NotFound
from shared.execution import dispatch
from shared.identity import users
from shared.models import Decision
from shared.signals import approvals, queries
from web.extensions import db, task_queue
from web.pages import NAV, blp, nav, session
from web.pages.session import current_user, page_login_required

nav("pages.signals", "Pending signals")

# What a decision's redirect may say (a code, never text from the URL: a link cannot put words on the page).
NOTICES = {
    "approved": "Approved: the order is on its way.",
    "rejected": "Rejected.",
    "decided": "That signal was decided already, or it expired.",
    "missing": "No such signal of yours.",
}


@blp.app_context_processor
def _page_globals() -> dict[str, Any]:
    return {"csrf_token": session.csrf_token, "nav": NAV, "signed_in": session.signed_in_user, "now": utcnow}


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another host)."""
    if not target:
        return "/signals"
    parts = urlsplit(target)
    # "/\\host" is "//host" to a browser: another site.
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
    ):
        return "/signals"
    return target


@blp.get("/")
def index() -> Any:
    return redirect("/signals" if session.signed_in_user() else "/login")


@blp.get("/login")
def login_form() -> Response:
    response = make_response(
        render_template("login.html", next=_safe_next(request.args.get("next")), error=None)
    )
    session.sign_in_nonce(response)
    return response


@blp.post("/login")
def login() -> Any:
    session.check_csrf()
    target = _safe_next(request.form.get("next"))
    try:
        user = users.authenticate(db.session, request.form.get("email", ""), request.form.get("password", ""))
    except NotAuthenticated:
        db.session.rollback()
        page = render_template("login.html", next=target, error="Wrong email or password.")
        refused = make_response(page, 401)  # a failed sign-in, as the throttle counts them
        session.sign_in_nonce(refused)
        return refused
    db.session.commit()  # a re-hashed password, if argon2's parameters changed
    response = redirect(target)
    session.start(response, user)
    return response


@blp.post("/logout")
@page_login_required
def logout() -> Any:
    response = redirect("/login")
    session.end(response)
    return response


@blp.get("/signals")
@page_login_required
def signals() -> str:
    notice = NOTICES.get(request.args.get("notice", ""))
    return render_template(
        "signals.html", pending=queries.pending_with_clients(db.session, current_user()), notice=notice
    )


@blp.get("/signals/table")
@page_login_required
def signals_table() -> str:
    """The pending signals alone: what the page fetches every second to stay current."""
    return render_template(
        "_signals_table.html", pending=queries.pending_with_clients(db.session, current_user())
    )


@blp.post("/signals/<int:signal_id>/decision")
@page_login_required
def decide(signal_id: int) -> Any:
    choice = request.form.get("decision")
    if choice not in ("approve", "reject"):
        abort(400, description="decision must be approve or reject")
    reason = (request.form.get("reason") or "").strip()[:500] or None
    try:
        approval = approvals.decide(
            db.session, current_user(), signal_id=signal_id, decision=Decision(choice), reason=reason
        )
    except Conflict:
        db.session.rollback()
        return redirect("/signals?notice=decided")
    except NotFound:
        db.session.rollback()
        return redirect("/signals?notice=missing")
    if approval.decision == Decision.APPROVE:
        dispatch.enqueue_execution_after_commit(db.session, task_queue(), approval.signal_id)
    db.session.commit()
    return redirect("/signals?notice=" + ("approved" if choice == "approve" else "rejected"))
