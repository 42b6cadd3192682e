from __future__ import annotations

from typing import Any

from shared.identity import clients
from web.api import BODY_ERRORS, Blueprint
from web.auth import current_user, login_required
from web.extensions import client_keys, db, secret_box
from web.schemas import ClientCreatedSchema, ClientCreateSchema, ClientSchema

blp = Blueprint(
    "clients", __name__, url_prefix="/api/v1/clients", description="Strategy clients and their HMAC secrets"
)


@blp.post("")
@login_required
@blp.arguments(ClientCreateSchema)
@blp.response(201, ClientCreatedSchema)
@blp.errors(*BODY_ERRORS, 401, (404, "no such account of yours"), 503)
def create_client(body: dict[str, Any]) -> Any:
    client, secret = clients.create_client(
        db.session, secret_box(), current_user(), name=body["name"], account_id=body["account_id"]
    )
    db.session.commit()
    shown = {name: getattr(client, name) for name in ClientSchema().fields}
    return {**shown, "secret": secret}


@blp.get("")
@login_required
@blp.response(200, ClientSchema(many=True))
@blp.errors(401, 503)
def list_clients() -> Any:
    return clients.list_own_clients(db.session, current_user())


@blp.delete("/<id:client_id>")
@login_required
@blp.response(204)
@blp.errors(401, 404, 503)
def revoke_client(client_id: int) -> Any:
    clients.revoke_client(db.session, current_user(), client_id)
    db.session.commit()
    # Other processes may keep the secret cached a few seconds; their inserts still refuse it.
    client_keys().forget(client_id)
    return None
