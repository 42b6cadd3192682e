"""How Flower is started: credentials always, and a longer wait for replies on the filesystem broker."""

from __future__ import annotations

import stat

import pytest

from workers import flower


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("TRADEGUARD_INSTANCE_DIR", str(tmp_path))
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    return tmp_path


def test_without_configured_credentials_one_password_is_generated_and_kept_private(instance):
    first = flower.basic_auth()
    user, password = first.split(":")
    assert user == "admin" and len(password) >= 16
    assert flower.basic_auth() == first  # kept, not generated anew
    mode = (instance / "flower-auth").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_configured_credentials_must_name_a_user_and_a_password(instance, monkeypatch):
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:secret")
    assert flower.flower_environment()["FLOWER_BASIC_AUTH"] == "ops:secret"
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "no-colon")
    with pytest.raises(SystemExit, match="user:password"):
        flower.basic_auth()


def test_the_credentials_go_to_flower_in_its_environment_never_on_its_command_line(instance):
    password = flower.basic_auth().split(":", 1)[1]
    assert not [arg for arg in flower.flower_command() if password in arg or "basic" in arg]
    assert flower.flower_environment()["FLOWER_BASIC_AUTH"] == f"admin:{password}"


def test_the_filesystem_broker_gets_a_longer_wait_for_worker_replies(instance, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert "--inspect_timeout=3000" in flower.flower_command()
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/15")
    assert not any(arg.startswith("--inspect_timeout") for arg in flower.flower_command())
