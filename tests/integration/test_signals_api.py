"""POST /api/v1/signals: signatures, idempotency, replays, validation; and reading signals back."""

import json
import time

import pytest
import sqlalchemy as sa

from shared.models import AuditLog, Signal
from tests.conftest import GOOD_SIGNAL

GOOD = GOOD_SIGNAL  # read only: tests spread it into new dicts


def signal_count(db_session) -> int:
    return db_session.scalar(sa.select(sa.func.count()).select_from(Signal))


def test_a_signed_signal_is_stored_pending_for_the_clients_account(api, db_session):
    world = api.setup()
    response = api.send_signal(world["client"], {**GOOD, "comment": "breakout", "ttl_seconds": 60})
    assert response.status_code == 201
    body = response.json
    assert body["status"] == "pending"
    assert body["account_id"] == world["account"]["id"]
    assert body["client_id"] == world["client"]["id"]
    assert (body["instrument"], body["side"], body["volume"], body["price"], body["sl"], body["tp"]) == (
        "EURUSD",
        "buy",
        "0.1",
        "1.1",
        "1.095",
        "1.11",
    )
    assert body["comment"] == "breakout" and body["ttl_seconds"] == 60
    stored = db_session.get(Signal, body["id"])
    assert str(stored.volume) == "0.1000" and stored.status.value == "pending"
    audit = db_session.scalars(sa.select(AuditLog).where(AuditLog.action == "signal.received")).one()
    assert (audit.actor_type, audit.actor_id, audit.target_id) == (
        "client",
        world["client"]["id"],
        body["id"],
    )


def test_default_ttl_applies_when_none_is_given(api):
    world = api.setup()
    body = api.send_signal(world["client"], {"instrument": "XAUUSD", "side": "sell", "volume": 1}).json
    assert body["ttl_seconds"] == 120


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda h, b: h.pop("X-Signature"), "required"),
        (lambda h, b: h.pop("X-Client-Id"), "required"),
        (lambda h, b: h.pop("X-Timestamp"), "required"),
        (lambda h, b: h.update({"X-Signature": "0" * 64}), "bad signature"),
        (lambda h, b: h.update({"X-Client-Id": "999999"}), "unknown"),
        (lambda h, b: h.update({"X-Client-Id": "abc"}), "unknown"),
        (lambda h, b: h.update({"X-Timestamp": "yesterday"}), "unix seconds"),
    ],
)
def test_bad_or_missing_signature_headers_are_401(api, db_session, mutate, words):
    world = api.setup()
    body = json.dumps(GOOD).encode()
    headers = api.signed_headers(world["client"], body)
    mutate(headers, body)
    response = api.http.post("/api/v1/signals", data=body, headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized"
    assert words in response.json["error"]["message"]
    assert signal_count(db_session) == 0


def test_a_tampered_body_is_401(api, db_session):
    world = api.setup()
    body = json.dumps(GOOD).encode()
    headers = api.signed_headers(world["client"], body)
    tampered = body.replace(b'"0.10"', b'"9.00"')
    response = api.http.post("/api/v1/signals", data=tampered, headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["message"] == "bad signature"
    assert signal_count(db_session) == 0


@pytest.mark.parametrize("offset", [-301, 301, -100000])
def test_timestamps_more_than_300_s_off_are_401(api, db_session, offset):
    world = api.setup()
    response = api.send_signal(world["client"], GOOD, timestamp=int(time.time()) + offset)
    assert response.status_code == 401
    assert "300 s" in response.json["error"]["message"]


def test_timestamps_within_300_s_are_accepted(api):
    world = api.setup()
    assert api.send_signal(world["client"], GOOD, timestamp=int(time.time()) - 290).status_code == 201


def test_a_revoked_client_is_401(api, db_session):
    world = api.setup()
    revoke = api.http.delete(f"/api/v1/clients/{world['client']['id']}", headers=world["user"]["headers"])
    assert revoke.status_code == 204
    response = api.send_signal(world["client"], GOOD)
    assert response.status_code == 401 and "revoked" in response.json["error"]["message"]


def test_a_byte_for_byte_retry_with_the_key_returns_the_same_signal(api, db_session):
    world = api.setup()
    body = json.dumps(GOOD).encode()
    headers = api.signed_headers(world["client"], body, key="order-42")
    first = api.http.post("/api/v1/signals", data=body, headers=headers)
    again = api.http.post("/api/v1/signals", data=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json == first.json
    assert signal_count(db_session) == 1


def test_a_re_signed_retry_with_the_key_returns_the_same_signal(api, db_session):
    world = api.setup()
    first = api.send_signal(world["client"], GOOD, key="order-43", timestamp=int(time.time()) - 5)
    again = api.send_signal(world["client"], GOOD, key="order-43")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["id"] == first.json["id"]
    assert signal_count(db_session) == 1


def test_the_same_key_with_a_different_signal_is_409(api, db_session):
    world = api.setup()
    assert api.send_signal(world["client"], GOOD, key="k").status_code == 201
    response = api.send_signal(world["client"], {**GOOD, "volume": "0.2"}, key="k")
    assert response.status_code == 409
    assert "Idempotency-Key" in response.json["error"]["fields"]
    assert signal_count(db_session) == 1


def test_idempotency_keys_belong_to_one_client(api, db_session):
    world = api.setup()
    other = api.strategy_client(world["user"], world["account"]["id"])
    a = api.send_signal(world["client"], GOOD, key="shared-key")
    b = api.send_signal(other, GOOD, key="shared-key")
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json["id"] != b.json["id"]


def test_a_replayed_signature_without_the_key_is_409(api, db_session):
    world = api.setup()
    body = json.dumps(GOOD).encode()
    headers = api.signed_headers(world["client"], body)
    assert api.http.post("/api/v1/signals", data=body, headers=headers).status_code == 201
    replay = api.http.post("/api/v1/signals", data=body, headers=headers)
    assert replay.status_code == 409
    assert replay.json["error"]["fields"] == {"X-Signature": ["already used"]}
    # Adding a key the attacker made up does not turn a replay into a new signal either.
    replay_with_key = api.http.post(
        "/api/v1/signals", data=body, headers={**headers, "Idempotency-Key": "new"}
    )
    assert replay_with_key.status_code == 409
    assert signal_count(db_session) == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**GOOD, "volume": 0}, "volume"),
        ({**GOOD, "volume": "-1"}, "volume"),
        ({**GOOD, "volume": "0.00001"}, "volume"),
        ({**GOOD, "volume": "NaN"}, "volume"),
        ({**GOOD, "volume": True}, "volume"),
        ({**GOOD, "volume": "1e400"}, "volume"),
        ({**GOOD, "volume": "lots"}, "volume"),
        ({**GOOD, "side": "hold"}, "side"),
        ({**GOOD, "instrument": ""}, "instrument"),
        ({**GOOD, "instrument": "EUR USD; DROP TABLE"}, "instrument"),
        ({k: v for k, v in GOOD.items() if k != "instrument"}, "instrument"),
        ({**GOOD, "sl": "1.1050"}, "sl"),
        ({**GOOD, "tp": "1.0900"}, "tp"),
        ({**GOOD, "side": "sell"}, "sl"),
        ({**GOOD, "price": "12345678901"}, "price"),
        ({**GOOD, "price": -1}, "price"),
        ({**GOOD, "ttl_seconds": 0}, "ttl_seconds"),
        ({**GOOD, "ttl_seconds": 10**9}, "ttl_seconds"),
        ({**GOOD, "ttl_seconds": "60"}, "ttl_seconds"),
        ({**GOOD, "comment": "x" * 256}, "comment"),
        ({**GOOD, "leverage": 500}, "leverage"),
    ],
)
def test_invalid_bodies_are_422_naming_the_field_and_store_nothing(api, db_session, payload, field):
    world = api.setup()
    response = api.send_signal(world["client"], payload)
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == "validation_error"
    assert field in response.json["error"]["fields"]
    assert signal_count(db_session) == 0


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"\xff\xfe{}", 400, "body"),  # not UTF-8
        (b"[" * 50_000, 400, "body"),  # too deep for the JSON parser: was a 500 (RecursionError)
        (b"[1, 2]", 422, "body"),
        (b'"a string"', 422, "body"),
        (b"null", 422, "body"),
        (b"", 422, "instrument"),  # no body: the required fields are named
    ],
)
def test_bodies_that_are_not_a_json_object_are_4xx_json(api, db_session, raw, status, field):
    world = api.setup()
    response = api.http.post("/api/v1/signals", data=raw, headers=api.signed_headers(world["client"], raw))
    assert response.status_code == status
    assert field in response.json["error"]["fields"]
    assert signal_count(db_session) == 0


def test_a_body_not_sent_as_json_is_415_naming_the_content_type(api, db_session):
    world = api.setup()
    body = json.dumps(GOOD).encode()
    headers = {**api.signed_headers(world["client"], body), "Content-Type": "text/plain"}
    response = api.http.post("/api/v1/signals", data=body, headers=headers)
    assert response.status_code == 415
    assert response.json["error"]["code"] == "unsupported_media_type"
    assert "Content-Type" in response.json["error"]["fields"]
    assert signal_count(db_session) == 0


def test_an_over_long_idempotency_key_is_422(api, db_session):
    world = api.setup()
    response = api.send_signal(world["client"], GOOD, key="k" * 129)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json["error"]["fields"]
    assert signal_count(db_session) == 0


def test_owners_list_their_signals_with_status_filter_and_paging(api, db_session):
    world = api.setup()
    # Different comments: the same body signed in the same second would be the same signature (a replay).
    ids = [api.send_signal(world["client"], {**GOOD, "comment": f"n{i}"}).json["id"] for i in range(3)]
    api.decide(world["user"], ids[0], "reject")
    stranger = api.setup()
    api.send_signal(stranger["client"], GOOD)

    headers = world["user"]["headers"]
    everything = api.http.get("/api/v1/signals", headers=headers).json
    assert everything["total"] == 3
    assert [s["id"] for s in everything["items"]] == list(reversed(ids))  # newest first

    pending = api.http.get("/api/v1/signals?status=pending", headers=headers).json
    assert sorted(s["id"] for s in pending["items"]) == ids[1:]
    assert all(s["status"] == "pending" for s in pending["items"])

    page2 = api.http.get("/api/v1/signals?per_page=2&page=2", headers=headers).json
    assert (page2["total"], page2["page"], page2["per_page"]) == (3, 2, 2)
    assert [s["id"] for s in page2["items"]] == [ids[0]]


@pytest.mark.parametrize("query", ["status=bogus", "page=0", "per_page=1000", "page=x"])
def test_bad_list_parameters_are_422_naming_the_parameter(api, query):
    world = api.setup()
    response = api.http.get(f"/api/v1/signals?{query}", headers=world["user"]["headers"])
    assert response.status_code == 422
    assert query.split("=")[0] in response.json["error"]["fields"]


def test_another_users_signal_is_404(api):
    mine, theirs = api.setup(), api.setup()
    their_signal = api.send_signal(theirs["client"], GOOD).json["id"]
    response = api.http.get(f"/api/v1/signals/{their_signal}", headers=mine["user"]["headers"])
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    own = api.http.get(f"/api/v1/signals/{their_signal}", headers=theirs["user"]["headers"])
    assert own.status_code == 200 and own.json["id"] == their_signal


def test_signals_need_a_bearer_token_to_read(api):
    assert api.http.get("/api/v1/signals").status_code == 401
    assert api.http.get("/api/v1/signals/1").json["error"]["code"] == "unauthorized"


def test_a_client_revoked_while_its_secret_is_cached_elsewhere_stores_nothing(api, app, db_session):
    """Another web process may still hold the secret: the insert itself refuses a revoked client."""
    from shared.models import StrategyClient

    world = api.setup()
    assert api.send_signal(world["client"], {**GOOD, "comment": "warm the cache"}).status_code == 201
    cache = app.extensions["tradeguard.client_keys"]
    assert cache._keys.get(world["client"]["id"]) is not None
    # Revoked directly in the database, as a DELETE served by another process would do.
    db_session.get(StrategyClient, world["client"]["id"]).revoked = True
    db_session.commit()
    response = api.send_signal(world["client"], {**GOOD, "comment": "after revocation"})
    assert response.status_code == 401 and "revoked" in response.json["error"]["message"]
    assert signal_count(db_session) == 1


def test_the_ingest_response_is_the_signal_as_the_api_reads_it_back(api, db_session):
    """The ingest path returns the row its own statement wrote (no ORM object); the document must be
    the same one GET /signals/{id} serves for that row, field for field."""
    world = api.setup()
    sent = [
        api.send_signal(world["client"], {**GOOD, "comment": "full", "ttl_seconds": 60}, key="r-1"),
        api.send_signal(world["client"], {"instrument": "XAUUSD", "side": "sell", "volume": "100"}),
    ]
    assert [r.status_code for r in sent] == [201, 201]
    for response in sent:
        read_back = api.http.get(f"/api/v1/signals/{response.json['id']}", headers=world["user"]["headers"])
        assert response.json == read_back.json


@pytest.mark.parametrize("field", ["comment", "instrument"])
@pytest.mark.parametrize(
    ("text", "problem"),
    [("bad\u0000value", "NUL"), ("bad\ud800value", "Unicode")],  # JSON can spell a lone surrogate
)
def test_text_postgres_cannot_store_is_422_not_a_server_error(api, db_session, field, text, problem):
    world = api.setup()
    response = api.send_signal(world["client"], {**GOOD, field: text})
    assert response.status_code == 422 and problem in response.json["error"]["fields"][field][0]
    assert signal_count(db_session) == 0


def test_a_nul_in_the_idempotency_key_is_422(api, db_session):
    world = api.setup()
    response = api.send_signal(world["client"], GOOD, key="k\u0001")
    assert response.status_code == 422 and "Idempotency-Key" in response.json["error"]["fields"]


# --- strict input (issue 10, item 6) ---------------------------------------------------------------


def post_raw(api, strategy, raw: bytes):
    """POST `raw` exactly as given (json.dumps could not write a duplicate key or a NaN token), signed."""
    return api.http.post("/api/v1/signals", data=raw, headers=api.signed_headers(strategy, raw))


@pytest.mark.parametrize(
    "text",
    [
        "1_000",  # Python's Decimal reads it as 1000
        "0.1e1",  # and this as 1.0
        "1E+2",
        " 0.1",
        "0.1 ",
        "0.1\n",  # `$` in a regex would let the newline through
        "NaN",
        "Infinity",
        "+0.1",
        ".5",
        "5.",
        "0x1",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to \d and to Decimal, not to the API
        "",
    ],
)
@pytest.mark.parametrize("field", ["volume", "price"])
def test_decimal_strings_are_plain_digits_only_or_422_naming_the_field(api, db_session, field, text):
    world = api.setup()
    response = api.send_signal(world["client"], {**GOOD, field: text})
    assert response.status_code == 422, response.json
    assert list(response.json["error"]["fields"]) == [field]
    assert signal_count(db_session) == 0


def test_a_key_given_twice_is_400_naming_it_and_stores_nothing(api, db_session):
    world = api.setup()
    raw = b'{"instrument": "EURUSD", "side": "buy", "volume": "0.1", "volume": "1000"}'
    response = post_raw(api, world["client"], raw)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_request"
    assert response.json["error"]["fields"] == {"volume": ["given twice"]}
    assert signal_count(db_session) == 0


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_tokens_are_not_json_400(api, db_session, token):
    world = api.setup()
    raw = b'{"instrument": "EURUSD", "side": "buy", "volume": "0.1", "price": ' + token + b"}"
    response = post_raw(api, world["client"], raw)
    assert response.status_code == 400
    assert response.json["error"]["fields"] == {"body": [f"{token.decode()} is not JSON"]}
    assert signal_count(db_session) == 0


def test_a_json_number_is_read_exactly_not_as_a_float(api, db_session):
    """A float holds about 17 digits: 123456789.0123456789 would be stored as 123456789.0123456700."""
    world = api.setup()
    raw = b'{"instrument": "EURUSD", "side": "sell", "volume": 0.1, "price": 123456789.0123456789}'
    response = post_raw(api, world["client"], raw)
    assert response.status_code == 201, response.json
    assert (response.json["volume"], response.json["price"]) == ("0.1", "123456789.0123456789")
    stored = db_session.get(Signal, response.json["id"])
    assert str(stored.price) == "123456789.0123456789" and str(stored.volume) == "0.1000"


def test_a_number_with_an_exponent_is_its_value_1e1_is_ten_lots(api, db_session):
    """A JSON number may be written with an exponent; it is the number it spells (only a decimal
    *string* must be plain digits)."""
    world = api.setup()
    response = post_raw(api, world["client"], b'{"instrument": "EURUSD", "side": "buy", "volume": 1e1}')
    assert response.status_code == 201, response.json
    assert response.json["volume"] == "10"
    assert str(db_session.get(Signal, response.json["id"]).volume) == "10.0000"


def test_more_places_than_the_column_keeps_are_422_even_past_28_digits(api, db_session):
    """Counted exactly: normalize() rounds to 28 significant digits first, and this would have been
    stored as 1.0000, silently."""
    world = api.setup()
    response = api.send_signal(world["client"], {**GOOD, "volume": "1.00000000000000000000000000001"})
    assert response.status_code == 422
    assert response.json["error"]["fields"] == {"volume": ["at most 4 decimal places"]}
    assert signal_count(db_session) == 0


def test_a_re_signed_retry_of_a_body_with_json_numbers_is_the_same_signal(api, db_session):
    """The idempotency check compares canonical hashes of the bodies: it must hash the Decimals the
    body is now read into, equal for equal bodies."""
    world = api.setup()
    body = {**GOOD, "volume": 0.1, "price": 1.1, "sl": 1.0950, "tp": 1.11}
    first = api.send_signal(world["client"], body, key="numbers", timestamp=int(time.time()) - 1)
    again = api.send_signal(world["client"], body, key="numbers")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["id"] == first.json["id"]
    assert signal_count(db_session) == 1
