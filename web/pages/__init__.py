"""The owner's pages: server-rendered HTML at `/`, signed in with a cookie of their own
(web.pages.session), every form with a CSRF token, live parts refreshed by a few lines of our own
JavaScript (static/tradeguard.js, served from /static: nothing is fetched from elsewhere).

The views parse, authorise, call the features and render; like the API's, they hold no SQL."""

from __future__ import annotations

from flask import Blueprint

blp = Blueprint(
    "pages", __name__, template_folder="templates", static_folder="static", static_url_path="/static"
)

# What the navigation shows, in order: (endpoint, label). A page module adds its own entry.
NAV: list[tuple[str, str]] = []


def nav(endpoint: str, label: str) -> None:
    NAV.append((endpoint, label))


# Each module registers its views on blp, and its entries in NAV, in this order.
from web.pages import views  # noqa: E402,F401,I001
from web.pages import accounts_views  # noqa: E402,F401
from web.pages import trades_views  # noqa: E402,F401
from web.pages import settings_views  # noqa: E402,F401
