"""An account's risk settings: one JSON document, read and replaced whole."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView

from shared.guards import risk_settings
from shared.identity.accounts import get_own_account
from web.api import BODY_ERRORS, Blueprint
from web.auth import current_user, login_required
from web.extensions import db
from web.json_body import json_body
from web.schemas import RiskSettingsDocSchema

blp = Blueprint("risk", __name__, url_prefix="/api/v1/accounts", description="Risk settings")

# The body is validated whole by shared.guards.settings.validate_settings (in the view), which names a
# nested field with dots; flask-smorest is told about it here, for the document only.
_DOCUMENT_BODY = {"required": True, "content": {"application/json": {"schema": RiskSettingsDocSchema}}}


@blp.route("/<id:account_id>/risk")
class AccountRiskSettings(MethodView):
    # One URL rule for both methods: with a rule per method, a PUT to an id the URL converter refuses
    # (0, or past 2**31-1) matched the GET rule's pattern and was answered 405 instead of 404.

    @login_required
    @blp.response(200, RiskSettingsDocSchema)
    @blp.errors(401, 404, 503)
    def get(self, account_id: int) -> Any:
        """An account's risk settings

        The defaults until its owner saves some: drawdown guards that warn and never close, order limits
        off (`null`).
        """
        account = get_own_account(db.session, current_user(), account_id)
        return risk_settings.document_of(db.session, account.id)

    @login_required
    @blp.doc(requestBody=_DOCUMENT_BODY)
    @blp.response(200, RiskSettingsDocSchema)
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    @blp.errors(*BODY_ERRORS, 401, 404, 503)
    def put(self, account_id: int) -> Any:
        """Replace an account's risk settings

        The whole document, checked as a whole: 422 names each bad field (`drawdown_limits.0.max_percent`),
        an unknown key included, and nothing is stored. Optional values left out take their defaults. The
        change is audited (`account.risk_updated`, with who made it and the document before and after);
        the answer is the document as stored.
        """
        # Someone else's account is 404 whatever the document says (save_risk_settings checks it first).
        stored = risk_settings.save_risk_settings(db.session, current_user(), account_id, json_body(request))
        db.session.commit()
        return stored
