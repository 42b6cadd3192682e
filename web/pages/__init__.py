"""The owner's pages: server-rendered HTML at `/`, signed in with a cookie of their own
(web.pages.session), every form with a CSRF token, live parts refreshed by a few lines of our own
JavaScript (static/tradeguard.js, served from /static: nothing is fetched from elsewhere).

The views parse, authorise, call the features and render; like the API's, they hold no SQL."""

from __future__ import annotations

from flask import Blueprint, Response, render_template

blp = Blueprint(
    "pages", __name__, template_folder="templates", static_folder="static", static_url_path="/static"
)

# What an error page's heading says, by status (the message is the error's own).
_HEADINGS = {
    400: "That request could not be read",
    403: "Refused",
    404: "Not found",
    409: "Already done",
    422: "Not valid",
    429: "Too many attempts",
    503: "Unavailable for a moment",
}


@blp.after_request
def _errors_as_pages(response: Response) -> Response:
    """An error answered on a page (by a view, the CSRF check, the throttle or the app's handlers, which
    all speak the API's JSON envelope) is shown as a page: the same status, message and headers."""
    if response.status_code < 400 or response.mimetype != "application/json":
        return response
    try:
        message = str(response.get_json()["error"]["message"])
    except (TypeError, KeyError, ValueError):
        return response
    heading = _HEADINGS.get(response.status_code, "Something went wrong")
    page = Response(
        render_template("error.html", status=response.status_code, heading=heading, message=message),
        status=response.status_code,
        mimetype="text/html",
    )
    for name in ("Retry-After", "Allow"):
        if name in response.headers:
            page.headers[name] = response.headers[name]
    return page


# What the navigation shows, in order: (endpoint, label). A page module adds its own entry.
NAV: list[tuple[str, str]] = []


def nav(endpoint: str, label: str) -> None:
    NAV.append((endpoint, label))


# Each module registers its views on blp, and its entries in NAV, in this order.
from web.pages import views  # noqa: E402,F401,I001
from web.pages import accounts_views  # noqa: E402,F401
from web.pages import trades_views  # noqa: E402,F401
from web.pages import settings_views  # noqa: E402,F401
