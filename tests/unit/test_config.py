import os
import stat

import pytest
from cryptography.fernet import Fernet

from shared.core.config import ConfigurationError, describe, load_settings


def test_embedded_defaults_use_sqlite_filesystem_broker_and_generated_secrets(tmp_path):
    settings = load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'tradeguard.db'}"
    assert settings.broker_url == "filesystem://"
    assert settings.secrets_generated
    secrets_file = tmp_path / "secrets.json"
    assert stat.S_IMODE(os.stat(secrets_file).st_mode) == 0o600
    # A second process on the same machine reads the same secrets instead of making new ones.
    again = load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)})
    assert (again.jwt_secret, again.encryption_keys) == (settings.jwt_secret, settings.encryption_keys)
    assert "embedded SQLite" in describe(settings) and "filesystem broker" in describe(settings)


def test_database_and_redis_urls_switch_to_postgres_and_redis(tmp_path):
    settings = load_settings(
        {
            "TRADEGUARD_INSTANCE_DIR": str(tmp_path),
            "DATABASE_URL": "postgres://tg:hunter2@db.internal:5432/tradeguard",
            "REDIS_URL": "redis://:pw@cache:6379/0",
            # A server database needs the secrets set (tests/unit/test_key_check.py).
            "TRADEGUARD_SECRET_KEY": "a",
            "TRADEGUARD_JWT_SECRET": "b",
            "TRADEGUARD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        }
    )
    assert settings.database_url == "postgresql+psycopg2://tg:hunter2@db.internal:5432/tradeguard"
    assert settings.broker_url == "redis://:pw@cache:6379/0"
    line = describe(settings)
    assert "Postgres" in line and "Redis" in line
    assert "hunter2" not in line and ":pw@" not in line


def test_secrets_from_environment_are_used_and_nothing_is_generated(tmp_path):
    key = Fernet.generate_key().decode()
    settings = load_settings(
        {
            "TRADEGUARD_INSTANCE_DIR": str(tmp_path),
            "TRADEGUARD_SECRET_KEY": "a",
            "TRADEGUARD_JWT_SECRET": "b",
            "TRADEGUARD_ENCRYPTION_KEY": key,
        }
    )
    assert settings.encryption_keys == (key,)
    assert not settings.secrets_generated
    assert not (tmp_path / "secrets.json").exists()


def test_malformed_settings_are_refused_with_the_variable_named(tmp_path):
    base = {"TRADEGUARD_INSTANCE_DIR": str(tmp_path)}
    with pytest.raises(ConfigurationError, match="TRADEGUARD_ENCRYPTION_KEY"):
        load_settings(
            {
                **base,
                "TRADEGUARD_SECRET_KEY": "a",
                "TRADEGUARD_JWT_SECRET": "b",
                "TRADEGUARD_ENCRYPTION_KEY": "not-a-key",
            }
        )
    with pytest.raises(ConfigurationError, match="TRADEGUARD_SIGNAL_TTL_SECONDS"):
        load_settings({**base, "TRADEGUARD_SIGNAL_TTL_SECONDS": "soon"})
    with pytest.raises(ConfigurationError, match="TRADEGUARD_EXPIRY_SWEEP_SECONDS"):
        load_settings({**base, "TRADEGUARD_EXPIRY_SWEEP_SECONDS": "0"})


def test_reconciliation_tolerances_and_breaker_come_from_the_environment(tmp_path):
    from decimal import Decimal

    from workers.runtime import reconcile_tolerances

    settings = load_settings(
        {
            "TRADEGUARD_INSTANCE_DIR": str(tmp_path),
            "TRADEGUARD_MATCH_VOLUME_PERCENT": "7.5",
            "TRADEGUARD_MATCH_PRICE_PIPS": "3",
            "TRADEGUARD_SLIPPAGE_PIPS": "0.5",
            "TRADEGUARD_VOLUME_DIVERGENCE_PERCENT": "12",
            "TRADEGUARD_STOP_DIVERGENCE_PIPS": "0",
            "TRADEGUARD_BREAKER_FIRST_BACKOFF_SECONDS": "5",
            "TRADEGUARD_BREAKER_MAX_BACKOFF_SECONDS": "60",
        }
    )
    tolerances = reconcile_tolerances(settings)
    assert (
        tolerances.match_volume_percent,
        tolerances.match_price_pips,
        tolerances.slippage_pips,
        tolerances.volume_percent,
        tolerances.stop_pips,
    ) == (Decimal("7.5"), Decimal(3), Decimal("0.5"), Decimal(12), Decimal(0))
    assert (settings.breaker_first_backoff_seconds, settings.breaker_max_backoff_seconds) == (5.0, 60.0)

    defaults = reconcile_tolerances(load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)}))
    assert (defaults.match_volume_percent, defaults.slippage_pips, defaults.stop_pips) == (5, 5, 10)


@pytest.mark.parametrize("raw", ["lots", "-1", "NaN", "Infinity"])
def test_a_tolerance_that_is_not_a_non_negative_number_is_refused_with_its_name(tmp_path, raw):
    with pytest.raises(ConfigurationError, match="TRADEGUARD_SLIPPAGE_PIPS"):
        load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path), "TRADEGUARD_SLIPPAGE_PIPS": raw})


def test_the_magic_number_is_tradeguards_own_and_stays_so(tmp_path):
    """Every order carries it, and reconciliation and the lost-reply lookup recognise TradeGuard's
    positions by it (with the comment): a changed default would make every open position an outside
    one. So the number is written here, not read from the code."""
    from shared.core.config import DEFAULT_MAGIC

    assert DEFAULT_MAGIC == 770077
    assert load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)}).magic == 770077


def test_webhooks_reach_private_addresses_on_the_embedded_setup_only_unless_told(tmp_path):
    server = {
        "TRADEGUARD_INSTANCE_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://db/tradeguard",
        "TRADEGUARD_SECRET_KEY": "a",
        "TRADEGUARD_JWT_SECRET": "b",
        "TRADEGUARD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    embedded = load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)})
    production = load_settings(server)
    assert embedded.webhook_allow_private is True
    assert production.webhook_allow_private is False
    assert (production.webhook_timeout_seconds, production.webhook_retry_scale) == (5.0, 1.0)

    told = load_settings(
        {
            **server,
            "TRADEGUARD_WEBHOOK_ALLOW_PRIVATE": "true",
            "TRADEGUARD_WEBHOOK_TIMEOUT_SECONDS": "2.5",
            "TRADEGUARD_WEBHOOK_RETRY_SCALE": "0.01",
        }
    )
    assert (told.webhook_allow_private, told.webhook_timeout_seconds, told.webhook_retry_scale) == (
        True,
        2.5,
        0.01,
    )
    closed = load_settings(
        {"TRADEGUARD_INSTANCE_DIR": str(tmp_path), "TRADEGUARD_WEBHOOK_ALLOW_PRIVATE": "false"}
    )
    assert closed.webhook_allow_private is False
    with pytest.raises(ConfigurationError, match="TRADEGUARD_WEBHOOK_ALLOW_PRIVATE"):
        load_settings({**server, "TRADEGUARD_WEBHOOK_ALLOW_PRIVATE": "maybe"})


def test_snapshot_retention_windows_come_from_the_environment_in_order(tmp_path):
    base = {"TRADEGUARD_INSTANCE_DIR": str(tmp_path)}
    defaults = load_settings(base)
    assert (defaults.snapshot_full_days, defaults.snapshot_minute_days) == (7.0, 90.0)
    given = load_settings(
        {**base, "TRADEGUARD_SNAPSHOT_FULL_DAYS": "3", "TRADEGUARD_SNAPSHOT_MINUTE_DAYS": "3"}
    )
    assert (given.snapshot_full_days, given.snapshot_minute_days) == (3.0, 3.0)
    with pytest.raises(ConfigurationError, match="TRADEGUARD_SNAPSHOT_MINUTE_DAYS \\(6\\) must be at least"):
        load_settings({**base, "TRADEGUARD_SNAPSHOT_FULL_DAYS": "7", "TRADEGUARD_SNAPSHOT_MINUTE_DAYS": "6"})
