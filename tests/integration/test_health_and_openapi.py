"""Probes, the OpenAPI document, and the JSON error envelope for things no view handles."""

from dataclasses import replace

import pytest

from shared.config import load_settings
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


def test_readyz_is_503_naming_the_broker_when_it_is_unreachable(client, monkeypatch):
    from workers.celery_app import celery_app

    monkeypatch.setattr(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")
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


def test_unknown_paths_and_methods_get_the_json_envelope(client):
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"
    wrong_method = client.put("/api/v1/signals")
    assert wrong_method.status_code == 405 and wrong_method.json["error"]["code"] == "method_not_allowed"


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
