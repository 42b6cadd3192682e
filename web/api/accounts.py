from __future__ import annotations

from typing import Any

from shared import accounts
from web.api import Blueprint
from web.auth import current_user, login_required
from web.extensions import db, secret_box
from web.schemas import AccountCreateSchema, AccountSchema

blp = Blueprint("accounts", __name__, url_prefix="/api/v1/accounts", description="Broker accounts")


@blp.post("")
@login_required
@blp.arguments(AccountCreateSchema)
@blp.response(201, AccountSchema)
def create_account(body: dict[str, Any]) -> Any:
    account = accounts.create_account(db.session, secret_box(), current_user(), **body)
    db.session.commit()
    return account


@blp.get("")
@login_required
@blp.response(200, AccountSchema(many=True))
def list_accounts() -> Any:
    return accounts.list_own_accounts(db.session, current_user())


@blp.get("/<id:account_id>")
@login_required
@blp.response(200, AccountSchema)
def get_account(account_id: int) -> Any:
    return accounts.get_own_account(db.session, current_user(), account_id)
