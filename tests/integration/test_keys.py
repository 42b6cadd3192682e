"""Keys on Postgres (issue 10, item 3): a worker with the wrong keys refuses to start, and a strategy
client whose stored secret cannot be decrypted gets a JSON 401, never a 500."""

from __future__ import annotations

import tempfile
from pathlib import Path

import sqlalchemy as sa
from cryptography.fernet import Fernet

from shared.core import extensions
from shared.core.crypto import SecretBox
from shared.identity import key_check
from shared.models import KeyCheck, StrategyClient
from tests.processes import CeleryProcess, _env, wait_for


def test_a_worker_started_with_other_keys_refuses_to_start_and_says_why(app, committed_db):
    settings = extensions.settings(app)
    key_check.verify(committed_db, extensions.secret_box(app), settings.jwt_secrets)
    assert committed_db.scalar(sa.select(sa.func.count()).select_from(KeyCheck)) == 2

    log_path = Path(tempfile.mkdtemp(prefix="tg-wrong-keys-")) / "worker.log"
    worker = CeleryProcess(
        ["worker", "--loglevel=INFO", "--concurrency=1", "--without-gossip", "--without-mingle"],
        _env({"TRADEGUARD_ENCRYPTION_KEY": Fernet.generate_key().decode()}),
        log_path,
    )
    try:
        assert wait_for(lambda: worker.proc.poll() is not None, timeout=30), worker.log()
        assert worker.proc.returncode != 0
        log = worker.log()
        assert "TradeGuard worker refuses to start" in log
        assert "TRADEGUARD_ENCRYPTION_KEY cannot decrypt the key check" in log
        assert "ready." not in log  # it never took a task
    finally:
        worker.stop()


def test_a_client_whose_secret_cannot_be_decrypted_gets_a_json_401(api, db_session):
    world = api.setup()
    client = db_session.get(StrategyClient, world["client"]["id"])
    # Encrypted with a key that is no longer configured (dropped from TRADEGUARD_ENCRYPTION_KEY).
    client.secret_encrypted = SecretBox([Fernet.generate_key().decode()]).encrypt(world["client"]["secret"])
    db_session.commit()

    response = api.send_signal(world["client"])
    assert response.status_code == 401
    assert response.json["error"]["code"] == "client_secret_unreadable"
    assert "must create a new client" in response.json["error"]["message"]
