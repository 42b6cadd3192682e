"""The equity chart of an account, as an image: drawn by shared.insight.chart from what
shared.insight.chart_queries loads."""

from __future__ import annotations

from typing import Any

from flask import Response
from marshmallow import fields, validate

from shared.insight import chart, chart_queries
from web.api import Blueprint
from web.auth import current_user, login_required
from web.extensions import db
from web.schemas import MAX_ID, StrictInteger, TimeRangeQuerySchema

blp = Blueprint("charts", __name__, url_prefix="/api/v1/charts", description="The equity chart of an account")


class EquityChartQuerySchema(TimeRangeQuerySchema):
    """`from` and `to` as every query over time takes them (open ends: as far as the account's snapshots
    go), the account (required) and the image format."""

    account_id = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_ID))
    image_format = fields.String(
        data_key="format",
        load_default="png",
        validate=validate.OneOf(chart.FORMATS),
        metadata={"description": "png (the default) or svg"},
    )


CHART_RESPONSE = {
    "description": f"the chart, {chart.WIDTH_PX}x{chart.HEIGHT_PX} pixels: equity (each pixel column "
    "keeps its lowest and highest equity) and balance above, the drawdown from the peak in percent "
    "below, guard warnings, alerts raised and positions closed marked; in the account's currency. A "
    "range without snapshots still gives a chart, saying so.",
    "content": {
        chart.MEDIA_TYPES["png"]: {"schema": {"type": "string", "format": "binary"}},
        chart.MEDIA_TYPES["svg"]: {"schema": {"type": "string"}},
    },
}


@blp.get("/equity.png")
@login_required
@blp.arguments(EquityChartQuerySchema, location="query")
@blp.doc(responses={"200": CHART_RESPONSE})
@blp.errors(401, 404, 503)
def equity_chart(query: dict[str, Any]) -> Response:
    """An account's equity, balance and drawdown over time, as PNG or SVG

    Over [from, to); `format=svg` gives the same chart as SVG. Another user's account is 404.
    """
    data = chart_queries.equity_chart(
        db.session, current_user(), query["account_id"], query["start"], query["end"]
    )
    image_format = query["image_format"]
    image = data.render(image_format)
    response = Response(image, mimetype=chart.MEDIA_TYPES[image_format])
    response.headers["Content-Disposition"] = (
        f'inline; filename="equity-{query["account_id"]}.{image_format}"'
    )
    response.headers["Cache-Control"] = "private, no-cache"
    return response
