from __future__ import annotations

from web.api import Blueprint

blp = Blueprint("analytics", __name__, url_prefix="/api/v1/analytics", description="Performance analytics of an account's trades and equity")
