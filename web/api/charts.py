from __future__ import annotations

from web.api import Blueprint

blp = Blueprint("charts", __name__, url_prefix="/api/v1/charts", description="The equity chart of an account")
