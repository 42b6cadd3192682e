"""Probes, the OpenAPI document, and the JSON error envelope for things no view handles."""

import time
from dataclasses import replace

import pytest

from shared.core import extensions
from shared.core.config import load_settings
from web import create_app

CONTRACT_PATHS = {
    "/api/v1/auth/register": {"post"},
    "/api/v1/auth/login": {"post"},
    "/api/v1/accounts": {"get", "post"},
    "/api/v1/accounts/{account_id}": {"get"},
    "/api/v1/clients": {"get", "post"},
    "/api/v1/clients/{client_id}": {"delete"},
    "/api/v1/signals": {"get", "post"},
    "/api/v1/signals/{signal_id}": {"get"},
    "/api/v1/approvals": {"get", "post"},
    "/api/v1/approvals/{approval_id}": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
}


def test_healthz_and_readyz_with_database_and_broker_up(client):
    assert client.get("/healthz").json == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_is_503_naming_the_database_when_it_is_unreachable():
    settings = replace(
        load_settings(),
        database_url="postgresql+psycopg2://postgres@127.0.0.1:1/nowhere",
    )
    unready = create_app(settings, SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"connect_timeout": 2}})
    response = unready.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.json["checks"]["database"].startswith("error")
    assert response.json["checks"]["broker"] == "ok"


def test_readyz_is_503_naming_the_broker_when_it_is_unreachable(app, client, monkeypatch):
    from celery import Celery

    from shared.core.extensions import TASK_QUEUE
    from shared.core.queue import TaskQueue

    nowhere = Celery("tradeguard")
    nowhere.config_from_object("celeryconfig")
    nowhere.conf.broker_url = "redis://127.0.0.1:1/0"
    monkeypatch.setitem(app.extensions, TASK_QUEUE, TaskQueue(nowhere))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"] == {"database": "ok", "broker": response.json["checks"]["broker"]}
    assert response.json["checks"]["broker"].startswith("error")


def test_openapi_lists_every_path_of_the_contract_with_schemas(client):
    spec = client.get("/api/openapi.json").json
    assert spec["openapi"].startswith("3.")
    for path, methods in CONTRACT_PATHS.items():
        assert path in spec["paths"], path
        assert methods <= set(spec["paths"][path]), path
    create_signal = spec["paths"]["/api/v1/signals"]["post"]
    assert {p["name"] for p in create_signal["parameters"]} >= {
        "X-Client-Id",
        "X-Timestamp",
        "X-Signature",
        "Idempotency-Key",
    }
    body_schema = create_signal["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit(
        "/", 1
    )[-1]
    assert set(spec["components"]["schemas"][body_schema]["properties"]) >= {
        "instrument",
        "side",
        "volume",
        "sl",
        "tp",
    }


@pytest.mark.parametrize("window", [None, 120])
def test_the_document_states_the_timestamp_window_the_signature_check_enforces(app, window):
    """The X-Timestamp window the document gives is the app's setting (TRADEGUARD_SIGNATURE_MAX_SKEW_SECONDS),
    the one a signed request is held to: the default, and another value configured."""
    settings = extensions.settings(app)
    if window is not None:
        settings = replace(settings, signature_max_skew_seconds=window)
    enforced = settings.signature_max_skew_seconds
    client = app.test_client() if window is None else create_app(settings, TESTING=True).test_client()

    spec = client.get("/api/openapi.json").json
    (timestamp,) = (
        p for p in spec["paths"]["/api/v1/signals"]["post"]["parameters"] if p["name"] == "X-Timestamp"
    )
    assert f"refused when more than {enforced} s from server time" in timestamp["description"]

    def signed_at(offset: int):
        headers = {
            "X-Client-Id": str(2**31 - 1),  # no such client: only the timestamp can be wrong first
            "X-Timestamp": str(int(time.time()) + offset),
            "X-Signature": "0" * 64,
        }
        return client.post("/api/v1/signals", json={}, headers=headers)

    stale = signed_at(-(enforced + 5))
    assert stale.status_code == 401
    assert stale.json["error"]["message"] == f"X-Timestamp is more than {enforced} s from server time"
    within = signed_at(-(enforced - 5))
    assert within.status_code == 401 and "X-Timestamp" not in within.json["error"]["message"]


def test_unknown_paths_and_methods_get_the_json_envelope(client):
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"
    wrong_method = client.put("/api/v1/signals")
    assert wrong_method.status_code == 405 and wrong_method.json["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("put", "/api/v1/signals", {"GET", "POST"}),
        ("delete", "/api/v1/accounts/1", {"GET"}),
        ("post", "/healthz", {"GET"}),
    ],
)
def test_a_405_says_which_methods_the_url_takes_in_allow(client, method, path, allowed):
    response = getattr(client, method)(path)
    assert response.status_code == 405 and response.json["error"]["code"] == "method_not_allowed"
    assert response.content_type == "application/json"
    assert {m.strip() for m in response.headers["Allow"].split(",")} - {"HEAD", "OPTIONS"} == allowed


def test_an_oversized_body_is_413_json(client):
    response = client.post("/api/v1/auth/register", data=b"x" * (70 * 1024), content_type="application/json")
    assert response.status_code == 413 and response.json["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code", "field"),
    [
        # was a 500: webargs let the parser's RecursionError out
        (b"[" * 50_000, "application/json", 400, "bad_request", "body"),
        (b"{not json", "application/json", 400, "bad_request", "body"),
        (
            b'{"email": "a@example.com", "password": "long enough"}',
            "text/plain",
            415,
            "unsupported_media_type",
            "Content-Type",
        ),
        # The last "email" would win, silently.
        (
            b'{"email": "a@example.com", "password": "long enough", "email": "b@example.com"}',
            "application/json",
            400,
            "bad_request",
            "email",
        ),
        (b'{"email": "a@example.com", "password": NaN}', "application/json", 400, "bad_request", "body"),
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/auth/register", "/api/v1/auth/login"])
def test_unreadable_bodies_on_webargs_endpoints_are_4xx_naming_the_problem(
    client, path, raw, content_type, status, code, field
):
    response = client.post(path, data=raw, content_type=content_type)
    assert response.status_code == status
    assert response.json["error"]["code"] == code
    assert field in response.json["error"]["fields"]


def test_a_database_outage_is_a_503_json_not_a_500():
    settings = replace(load_settings(), database_url="postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")
    down = create_app(settings, SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"connect_timeout": 2}})
    response = down.test_client().post(
        "/api/v1/auth/login", json={"email": "a@example.com", "password": "whatever1"}
    )
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable" and "retry" in response.json["error"]["message"]


def test_the_api_keeps_no_cookie_session(app, client):
    """Bearer tokens and signatures only: no session cookie is read or set, and code that tried to
    write one would fail loudly instead of signing data into a cookie."""
    import flask
    from flask.sessions import NullSession

    with app.test_request_context("/healthz", headers={"Cookie": "session=forged"}):
        session = flask.session._get_current_object()  # type: ignore[attr-defined]
        assert isinstance(session, NullSession) and dict(session) == {}
        with pytest.raises(RuntimeError, match="session is unavailable"):
            session["user_id"] = 1
    response = client.get("/healthz")
    assert response.status_code == 200 and "Set-Cookie" not in response.headers


# --- the OpenAPI document tells the truth (issue 10, item 7) ---------------------------------------

PUBLIC_OPERATIONS = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
}


def operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield method, path, operation


def security_of(spec, operation):
    return operation.get("security", spec.get("security", []))


def test_the_document_says_which_operations_need_a_bearer_token_as_the_api_enforces_it(client):
    """Each operation is called with no credentials at all: a 401 exactly where the document asks for
    a bearer token (or, on signal ingest, for the signature headers it marks required)."""
    spec = client.get("/api/openapi.json").json
    seen = set()
    for method, path, operation in operations(spec):
        needs_token = {"bearerAuth": []} in security_of(spec, operation)
        signed = {
            p["name"] for p in operation.get("parameters", []) if p["in"] == "header" and p.get("required")
        } >= {"X-Client-Id", "X-Timestamp", "X-Signature"}
        url = path.replace("{", "").replace("}", "")  # /accounts/account_id: 404, or 401 first
        for name in (
            "account_id",
            "client_id",
            "signal_id",
            "approval_id",
            "trade_id",
            "webhook_id",
            "alert_id",
        ):
            url = url.replace(name, "1")
        response = getattr(client, method)(url, json={} if method == "post" else None)
        assert (response.status_code == 401) == (needs_token or signed), (method, path, response.json)
        if needs_token or signed:
            assert "401" in operation["responses"], (method, path)
        else:
            seen.add((method, path))
            assert security_of(spec, operation) == [], (method, path)
    assert seen == PUBLIC_OPERATIONS


def test_every_error_response_in_the_document_is_the_envelope_the_api_sends(client):
    spec = client.get("/api/openapi.json").json
    schemas = spec["components"]["schemas"]
    envelope = schemas["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    detail = schemas[envelope["properties"]["error"]["$ref"].rsplit("/", 1)[-1]]
    assert detail["required"] == ["code", "message"]
    assert detail["properties"]["code"]["type"] == "string"
    assert detail["properties"]["message"]["type"] == "string"
    problems = detail["properties"]["fields"]["additionalProperties"]
    assert problems == {"type": "array", "items": {"type": "string"}}
    assert "Error" not in schemas  # flask-smorest's {code: int, status, message, errors}

    responses = spec["components"].get("responses", {})
    for method, path, operation in operations(spec):
        assert "default" not in operation["responses"], (method, path)
        for status, response in operation["responses"].items():
            if status.startswith("2") or (path, status) == ("/readyz", "503"):
                continue
            response = responses[response["$ref"].rsplit("/", 1)[-1]] if "$ref" in response else response
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, status)

    # And the API does send that shape: a 404, a 422 with fields, a 401.
    for response in (
        client.get("/api/v1/nothing-here"),
        client.post("/api/v1/auth/register", json={"email": "not an email"}),
        client.get("/api/v1/signals"),
    ):
        error = response.json["error"]
        assert set(response.json) == {"error"} and set(error) <= {"code", "message", "fields"}
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert all(isinstance(p, list) for p in error.get("fields", {}).values())


def test_the_document_lists_the_error_statuses_each_operation_can_answer(client):
    spec = client.get("/api/openapi.json").json
    for method, path, operation in operations(spec):
        statuses = set(operation["responses"])
        where = (method, path)
        if {"bearerAuth": []} in security_of(spec, operation):
            assert "401" in statuses, where
        if "{" in path:
            assert "404" in statuses, where
        if "requestBody" in operation:
            assert {"400", "413", "415", "422"} <= statuses, where
        if where != ("get", "/healthz"):
            assert "503" in statuses, where
    paths = spec["paths"]
    for path in ("/api/v1/auth/register", "/api/v1/auth/login"):
        assert "429" in paths[path]["post"]["responses"], path
    assert "409" in paths["/api/v1/signals"]["post"]["responses"]
    assert "409" in paths["/api/v1/approvals"]["post"]["responses"]
    assert "403" in paths["/api/v1/audit"]["get"]["responses"]


def test_decimals_are_documented_as_the_strings_they_are_sent_as(client):
    from web.schemas import DECIMAL_PATTERN

    spec = client.get("/api/openapi.json").json
    schemas = spec["components"]["schemas"]
    text = {"type": "string", "format": "decimal", "pattern": DECIMAL_PATTERN}
    for schema, names in {
        "Signal": ["volume", "price", "sl", "tp"],
        "Trade": ["requested_volume", "requested_price", "filled_volume", "filled_price"],
        "ReconciliationEvent": ["volume", "price_open", "close_price", "pnl"],
        "AccountStatus": ["equity", "balance", "peak_equity", "drawdown_percent", "margin_level"],
        "PositionView": ["volume", "price_open", "price_current", "profit"],
    }.items():
        for name in names:
            prop = schemas[schema]["properties"][name]
            assert {k: prop[k] for k in text} == text, (schema, name)
    # Enumerations are typed strings with their values, not an untyped read-only blob.
    assert schemas["Signal"]["properties"]["status"] == {
        "type": "string",
        "enum": ["pending", "approved", "rejected", "expired"],
    }
    assert schemas["User"]["properties"]["role"]["enum"] == ["user", "admin"]


def test_the_document_states_the_input_constraints_the_api_enforces(client):
    import re

    spec = client.get("/api/openapi.json").json
    schemas = spec["components"]["schemas"]
    volume = schemas["SignalCreate"]["properties"]["volume"]
    number, text = volume["oneOf"]
    assert number == {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 100000}
    assert text["type"] == "string"
    for accepted in ("0.1", "10", "0.0001", "00.5"):
        assert re.fullmatch(text["pattern"], accepted), accepted
    for refused in ("0", "0.0", "-1", "1_000", "0.1e1", " 0.1", "NaN", ".5"):
        assert not re.fullmatch(text["pattern"], refused), refused

    terminal_url = schemas["AccountCreate"]["properties"]["terminal_url"]["pattern"]
    for url in ("sim://", "SIM://127.0.0.1:18812", "mt5://", "mt5linux://10.0.0.2:18812"):
        assert re.match(terminal_url, url), url
    for url in ("http://127.0.0.1", "file:///etc/passwd", "sim:/x"):
        assert not re.match(terminal_url, url), url

    since = next(
        p
        for p in spec["paths"]["/api/v1/reconciliation/{account_id}"]["get"]["parameters"]
        if p["name"] == "since"
    )
    assert since["schema"]["type"] == "string" and since["schema"]["format"] == "date-time"
