"""Schemathesis against the app: every operation of the OpenAPI document, fed generated requests (valid
and invalid ones), must answer without a server error and exactly as the document says: a status it
documents, with the content type and body schema documented for that status.

Requests carry a bearer token of an administrator (so /audit answers 200 too), and each generated
signal is signed by a real strategy client just before it is sent (`_signed`), so that it reaches
validation and storage instead of stopping at 401. The run is deterministic (derandomized) and bounded
(MAX_EXAMPLES per operation and generation mode): about 15 s here.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport.serialization import Binary

from shared.core.signing import sign
from shared.models import Role, User

MAX_EXAMPLES = 40

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def world(api: Any, db_session: Any) -> dict[str, Any]:
    """The caller: an administrator with an account, a strategy client and a signal, so that generated
    ids sometimes name rows that exist. The signer: another user's strategy client, which signs every
    generated signal; being someone else's, no generated DELETE of the caller's can revoke it."""
    caller = api.setup()
    db_session.execute(sa.update(User).where(User.id == caller["user"]["id"]).values(role=Role.ADMIN))
    api.send_signal(caller["client"])
    return {**caller, "signer": api.setup()["client"]}


@pytest.fixture
def openapi_schema(app: Any, world: dict[str, Any]) -> Any:
    config = schemathesis.Config()
    config.projects.default.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=config)


schema = schemathesis.pytest.from_fixture("openapi_schema")


def _raw_body(body: Any) -> bytes:
    """The bytes schemathesis would send for `body` (its JSON serializer, spelled out so that the
    signature covers exactly them)."""
    if body is NOT_SET:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, Binary):
        return json.dumps(str(body)).encode()
    return json.dumps(body).encode()


def _valid_object(case: Any) -> bool:
    return (
        case.meta is not None
        and case.meta.generation.mode == GenerationMode.POSITIVE
        and isinstance(case.body, dict)
    )


def _signed(case: Any, strategy: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body as it will be sent, and the headers a real client signs it with."""
    raw = _raw_body(case.body)
    timestamp = str(int(time.time()))
    return raw, {
        "Content-Type": "application/json",
        "X-Client-Id": str(strategy["id"]),
        "X-Timestamp": timestamp,
        "X-Signature": sign(strategy["secret"], timestamp, raw),
    }


@schema.parametrize()
@settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case: Any, world: dict[str, Any]) -> None:
    headers = dict(world["user"]["headers"])
    kwargs: dict[str, Any] = {}
    if (case.method, case.path) == ("POST", "/api/v1/accounts") and _valid_object(case):
        # The operator's list of terminals is not in the document: a valid account names one of them.
        case.body["terminal_url"] = "sim://"
    if case.method == "POST" and case.path == "/api/v1/signals":
        raw, signed = _signed(case, world["signer"])
        headers.update(signed)
        kwargs["data"] = raw
    case.call_and_validate(headers=headers, checks=CHECKS, **kwargs)
