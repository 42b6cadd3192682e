from __future__ import annotations

from web.api import Blueprint

blp = Blueprint("exports", __name__, url_prefix="/api/v1/exports", description="CSV exports of trades and reconciliation events")
