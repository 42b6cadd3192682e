from __future__ import annotations

from typing import Any

from shared.guards import engine as guard_engine
from shared.identity import accounts
from shared.notifications import webhooks
from web.api import BODY_ERRORS, Blueprint
from web.auth import current_user, login_required
from web.extensions import db, declared_terminals, secret_box, settings, task_queue
from web.schemas import AccountCreateSchema, AccountSchema, GuardResumeSchema

blp = Blueprint("accounts", __name__, url_prefix="/api/v1/accounts", description="Broker accounts")


@blp.post("")
@login_required
@blp.arguments(AccountCreateSchema)
@blp.response(201, AccountSchema)
@blp.errors(
    *BODY_ERRORS,
    401,
    (409, "you already have an account with that name, or that MT5 account (login and server) is registered"),
    503,
)
def create_account(body: dict[str, Any]) -> Any:
    """Add a broker account

    Unless `verify` is false, its terminal is logged in to first: 422 naming `terminal_url` when it
    cannot be reached in time, naming `login`, `password` and `server` when it refuses them. One MT5
    account (login and server) can be added once: 409 otherwise.
    """
    account = accounts.create_account(
        db.session,
        secret_box(),
        current_user(),
        declared_terminals=declared_terminals(),
        check_timeout=settings().account_check_timeout_seconds,
        **body,
    )
    db.session.commit()
    return account


@blp.get("")
@login_required
@blp.response(200, AccountSchema(many=True))
@blp.errors(401, 503)
def list_accounts() -> Any:
    return accounts.list_own_accounts(db.session, current_user())


@blp.get("/<id:account_id>")
@login_required
@blp.response(200, AccountSchema)
@blp.errors(401, 404, 503)
def get_account(account_id: int) -> Any:
    return accounts.get_own_account(db.session, current_user(), account_id)


@blp.post("/<id:account_id>/resume")
@login_required
@blp.response(200, GuardResumeSchema)
@blp.errors(401, 404, (409, "the account is not halted, or an alert is still closing its positions"), 503)
def resume_account(account_id: int) -> Any:
    """Resume a halted account

    New orders are accepted again, and the limit that halted the account starts again from the equity
    last read, so the same drawdown does not halt it again at the next reading. Needed after a
    `close` or `block` action whose limit resumes `manual` (those resuming `next_period` end by
    themselves at the next period start, in broker time).
    """
    notify = webhooks.notifier(task_queue())
    state = guard_engine.resume(db.session, current_user().id, account_id, notify=notify)
    db.session.commit()
    return {"account_id": account_id, "state": state.state, "equity": state.equity}
