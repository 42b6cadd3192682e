"""/api/docs: the interactive API page (Swagger UI), served with its assets by TradeGuard itself, so that it
works with no internet and sends no visitor's browser to a CDN. Checked in a real browser (Debian's
Chromium driven by Playwright) against the web process as the Procfile starts it."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.integration.conftest import SITE
from tests.processes import embedded_env, free_port, listening, procfile_processes, wait_for

# Opened under a name of its own, which the browser resolves to 127.0.0.1 (the `chromium` fixture):
# Swagger UI treats a spec on localhost differently (it never asks the online validator about one).
LOCAL_HOSTS = {SITE, "127.0.0.1", "localhost"}


def test_the_api_docs_page_renders_every_operation_from_local_assets_only(embedded_instance, chromium):
    port = free_port()
    env = embedded_env(embedded_instance, {"PORT": str(port), "WEB_CONCURRENCY": "1"})
    with procfile_processes(["web"], env) as processes:
        assert wait_for(lambda: listening(port), timeout=60), processes["web"].log()

        requested: list[str] = []
        page = chromium.new_page()

        def only_local(route):
            requested.append(route.request.url)
            # Anything for another host is refused here, in the browser: nothing leaves the machine.
            if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
                route.continue_()
            else:
                route.abort()

        page.route("**/*", only_local)
        page.goto(f"http://{SITE}:{port}/api/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)

        paths = {
            element.get_attribute("data-path") for element in page.query_selector_all(".opblock-summary-path")
        }
        assert {
            "/api/v1/signals",
            "/api/v1/approvals",
            "/api/v1/auth/login",
            "/api/v1/accounts/{account_id}",
        } <= paths
        assert "TradeGuard" in page.inner_text(".information-container")
        assert not [url for url in requested if urlsplit(url).hostname not in LOCAL_HOSTS], requested
        assert any(url.endswith("swagger-ui-bundle.js") for url in requested), requested
        page.close()
