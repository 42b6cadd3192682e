from __future__ import annotations

from typing import Any

from shared.identity import accounts
from web.api import BODY_ERRORS, Blueprint
from web.auth import current_user, login_required
from web.extensions import db, declared_terminals, secret_box
from web.schemas import AccountCreateSchema, AccountSchema

blp = Blueprint("accounts", __name__, url_prefix="/api/v1/accounts", description="Broker accounts")


@blp.post("")
@login_required
@blp.arguments(AccountCreateSchema)
@blp.response(201, AccountSchema)
@blp.errors(*BODY_ERRORS, 401, (409, "you already have an account with that name"), 503)
def create_account(body: dict[str, Any]) -> Any:
    account = accounts.create_account(
        db.session, secret_box(), current_user(), declared_terminals=declared_terminals(), **body
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
