"""Concurrent duplicates: the database's unique constraints decide, and the loser gets the winner's row."""

import json
import threading

import sqlalchemy as sa

from shared.models import Signal
from tests.conftest import Api

GOOD = {"instrument": "EURUSD", "side": "buy", "volume": "0.1"}


def test_simultaneous_retries_with_one_key_make_one_signal(app, committed_db):
    api = Api(app.test_client())
    world = api.setup()
    body = json.dumps(GOOD).encode()
    headers = api.signed_headers(world["client"], body, key="burst")

    statuses: list[tuple[int, int]] = []
    barrier = threading.Barrier(8)

    def send():
        http = app.test_client()
        barrier.wait()
        response = http.post("/api/v1/signals", data=body, headers=headers)
        statuses.append((response.status_code, response.json["id"]))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    codes = sorted(code for code, _ in statuses)
    assert codes == [200] * 7 + [201]
    assert len({signal_id for _, signal_id in statuses}) == 1
    assert committed_db.scalar(sa.select(sa.func.count()).select_from(Signal)) == 1
