"""Settings, read from environment variables only (see `.env.example`).

With no variables set TradeGuard runs on embedded defaults so that one command starts it on a bare
machine: a SQLite file and a filesystem Celery broker under `instance/`, and secrets generated once and
kept in `instance/secrets.json`. Setting `DATABASE_URL` and `REDIS_URL` switches to Postgres and Redis.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from cryptography.fernet import Fernet

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # shared/core/config.py -> the project


# TradeGuard's magic number: every order carries it, and positions and deals are recognised as TradeGuard's
# by it (with the trade's comment). Here, in the lowest layer, because the settings default to it
# (TRADEGUARD_MAGIC) and execution's own defaults must be the same number; shared.mt5 only passes on the
# number it is given.
DEFAULT_MAGIC = 770077


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed. Fix the environment variable named in the message and restart."""


@dataclass(frozen=True)
class Settings:
    instance_dir: Path
    database_url: str
    redis_url: str | None
    secret_key: str
    # HS256 secrets: the first signs tokens, all verify them, so the secret can be rotated.
    jwt_secrets: tuple[str, ...]
    # Fernet keys: the first encrypts, all decrypt, so a key can be rotated without downtime.
    encryption_keys: tuple[str, ...]
    jwt_ttl_seconds: int = 3600
    signal_default_ttl_seconds: int = 120
    signal_max_ttl_seconds: int = 86400
    signature_max_skew_seconds: int = 300
    expiry_sweep_seconds: float = 5.0
    client_key_cache_seconds: float = 30.0
    # Sign-in throttling (web/throttle.py), in the `limits` syntax ("10 per 15 minutes", several joined
    # by ";"): failed logins per email and per client address, and registrations per client address.
    # trusted_proxies is how many reverse proxies stand in front of gunicorn (X-Forwarded-For hops
    # believed): 0 means the client address is the socket's peer.
    login_limit_per_email: str = "10 per 15 minutes"
    login_limit_per_address: str = "50 per 15 minutes"
    register_limit_per_address: str = "20 per hour"
    trusted_proxies: int = 0
    # Execution: TradeGuard's magic number on every order, the price deviation allowed, how many
    # fresh-price retries after a requote, how long a terminal call may take, how long to keep looking
    # for an order whose reply was lost, and how many times a task retries an unreachable terminal.
    magic: int = DEFAULT_MAGIC
    deviation_points: int = 20
    max_price_retries: int = 3
    terminal_timeout_seconds: float = 10.0
    unknown_outcome_grace_seconds: float = 3.0
    execution_max_retries: int = 5
    # How long each call of the check that a new account's terminal can be logged in to may take
    # (POST /accounts): the owner is waiting for the answer, so shorter than a worker's.
    account_check_timeout_seconds: float = 5.0
    # Reconciliation: how often beat fans out, how many accounts one task takes (loaded and written
    # together), how many terminals one worker process waits on at once, how long an account lock may
    # outlive a dead worker, failures before the breaker opens.
    reconcile_interval_seconds: float = 10.0
    # Guards: how soon a breach seen on one reading is read again (each reading counts toward the
    # account's `confirmations`), and how often beat looks for alerts whose close is overdue (a lost
    # task message, a worker that died).
    guard_confirm_seconds: float = 0.2
    guard_sweep_seconds: float = 5.0
    # How often the watch quotes the held symbols and reads at once the accounts they may have pushed over
    # a limit (shared.guards.watch): what bounds how soon a breach between syncs is seen.
    guard_watch_seconds: float = 0.5
    reconcile_batch_size: int = 100
    # Snapshot retention (shared.insight.retention): full resolution for this many days, then one row per
    # account and minute, and one per account and hour after `snapshot_minute_days`.
    snapshot_full_days: float = 7.0
    snapshot_minute_days: float = 90.0
    reconcile_threads: int = 100
    reconcile_lock_seconds: float = 150.0
    breaker_failures: int = 3
    breaker_first_backoff_seconds: float = 30.0
    breaker_max_backoff_seconds: float = 600.0
    # Reconciliation tolerances (see shared.reconciliation.rules.Tolerances): matching by tolerance, and when
    # a matched position diverges from what was requested.
    match_volume_percent: Decimal = Decimal(5)
    match_price_pips: Decimal = Decimal(2)
    slippage_pips: Decimal = Decimal(5)
    volume_divergence_percent: Decimal = Decimal(10)
    stop_divergence_pips: Decimal = Decimal(10)
    # The terminals TradeGuard may connect to (TRADEGUARD_TERMINALS), as given; an account's terminal_url
    # must be one of them (see shared.mt5.terminals, which reads them).
    terminal_urls: tuple[str, ...] = ("sim://",)
    # Webhooks (shared.notifications): whether they may go to loopback and private addresses (the
    # embedded setup and tests: receivers on this machine; never in production, where it would let an
    # owner make the workers POST into the internal network), how long one POST may take, and a factor
    # on the retry schedule (tests only: 0.001 turns its hour into 4 s).
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 5.0
    webhook_retry_scale: float = 1.0
    secrets_generated: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def jwt_secret(self) -> str:
        """The secret new tokens are signed with."""
        return self.jwt_secrets[0]

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def broker_url(self) -> str:
        return self.redis_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return self.instance_dir / "broker"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from exc
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from exc
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {env.get(name)!r}")


def _decimal(env: Mapping[str, str], name: str, default: Decimal) -> Decimal:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation as exc:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from exc
    if not value.is_finite() or value < 0:
        raise ConfigurationError(f"{name} must be a number of at least 0, got {raw!r}")
    return value


def _rate_limit(env: Mapping[str, str], name: str, default: str) -> str:
    """A rate limit in the `limits` syntax, checked now so that a typo stops the process at start
    instead of turning every sign-in into an error."""
    from limits import parse_many

    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        items = parse_many(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"{name} must be a rate limit such as '10 per 15 minutes' (several joined by ';'), got {raw!r}"
        ) from exc
    if any(item.amount < 1 for item in items):
        raise ConfigurationError(f"{name} must allow at least 1 per window, got {raw!r}")
    return raw


def _normalise_database_url(url: str) -> str:
    # Heroku-style URLs say postgres://, which SQLAlchemy no longer accepts; and SQLAlchemy 2.1
    # defaults postgresql:// to psycopg 3, while TradeGuard ships psycopg2.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def _load_or_generate_secrets(instance_dir: Path) -> dict[str, str]:
    """Secrets for the embedded defaults, generated once and kept in instance/secrets.json (mode 600).

    Only for a single machine: workers on other machines must share the same keys, so production
    sets them through the environment.
    """
    path = instance_dir / "secrets.json"
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text())
        return loaded
    generated = {
        "SECRET_KEY": secrets.token_urlsafe(32),
        "JWT_SECRET": secrets.token_urlsafe(32),
        "ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    instance_dir.mkdir(parents=True, exist_ok=True)
    # Write to a temporary name then rename, so that two processes starting at once never read a
    # half-written file; the loser of the race simply reads the winner's keys.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(generated, fh)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    loaded = json.loads(path.read_text())
    return loaded


def _terminal_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    """TRADEGUARD_TERMINALS, or, when it is unset, the embedded simulator: in-process (`sim://`) and the
    Procfile's `terminal` process where TRADEGUARD_TERMINAL_HOST/PORT put it."""
    raw = env.get("TRADEGUARD_TERMINALS", "")
    if raw.strip():
        return tuple(url.strip() for url in raw.split(",") if url.strip())
    host = env.get("TRADEGUARD_TERMINAL_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # listening on every interface: reached on the loopback  # noqa: S104
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return ("sim://", f"sim://{shown}:{env.get('TRADEGUARD_TERMINAL_PORT') or 18812}")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    instance_dir = Path(env.get("TRADEGUARD_INSTANCE_DIR") or PROJECT_ROOT / "instance").resolve()
    instance_dir.mkdir(parents=True, exist_ok=True)

    database_url = env.get("DATABASE_URL") or f"sqlite:///{instance_dir / 'tradeguard.db'}"
    database_url = _normalise_database_url(database_url)
    redis_url = env.get("REDIS_URL") or None

    wanted = ("SECRET_KEY", "JWT_SECRET", "ENCRYPTION_KEY")
    given = {name: env.get(f"TRADEGUARD_{name}", "").strip() for name in wanted}
    generated = False
    if not all(given.values()):
        missing = ", ".join(f"TRADEGUARD_{name}" for name in wanted if not given[name])
        if not database_url.startswith("sqlite"):
            # Generated keys are for one machine's embedded setup. Next to a shared database they would
            # differ per machine (and vanish with the instance folder), making the stored passwords and
            # client secrets unreadable: refuse rather than start with keys nobody else has.
            raise ConfigurationError(
                f"{missing} must be set when DATABASE_URL names a server database: every web and worker "
                "machine must share the same secrets (see .env.example for how to generate them)"
            )
        stored = _load_or_generate_secrets(instance_dir)
        given = {name: given[name] or stored[name] for name in wanted}
        generated = True

    # Lists, for rotation: the first key encrypts (the first secret signs), all of them decrypt (verify).
    jwt_secrets = tuple(k.strip() for k in given["JWT_SECRET"].split(",") if k.strip())
    encryption_keys = tuple(k.strip() for k in given["ENCRYPTION_KEY"].split(",") if k.strip())
    if not jwt_secrets or not encryption_keys:
        raise ConfigurationError(
            "TRADEGUARD_JWT_SECRET and TRADEGUARD_ENCRYPTION_KEY must not be empty lists"
        )
    for key in encryption_keys:
        try:
            Fernet(key.encode())
        except ValueError as exc:
            raise ConfigurationError(
                "TRADEGUARD_ENCRYPTION_KEY must be one or more comma-separated Fernet keys "
                "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            ) from exc

    full_days = _float(env, "TRADEGUARD_SNAPSHOT_FULL_DAYS", 7.0)
    minute_days = _float(env, "TRADEGUARD_SNAPSHOT_MINUTE_DAYS", 90.0)
    if minute_days < full_days:
        # Sync rows would turn into minute rows only after the hour tier had passed them: never hourly.
        raise ConfigurationError(
            f"TRADEGUARD_SNAPSHOT_MINUTE_DAYS ({minute_days:g}) must be at least "
            f"TRADEGUARD_SNAPSHOT_FULL_DAYS ({full_days:g})"
        )

    return Settings(
        instance_dir=instance_dir,
        database_url=database_url,
        redis_url=redis_url,
        secret_key=given["SECRET_KEY"],
        jwt_secrets=jwt_secrets,
        encryption_keys=encryption_keys,
        jwt_ttl_seconds=_int(env, "TRADEGUARD_JWT_TTL_SECONDS", 3600),
        signal_default_ttl_seconds=_int(env, "TRADEGUARD_SIGNAL_TTL_SECONDS", 120),
        signal_max_ttl_seconds=_int(env, "TRADEGUARD_SIGNAL_MAX_TTL_SECONDS", 86400),
        signature_max_skew_seconds=_int(env, "TRADEGUARD_SIGNATURE_MAX_SKEW_SECONDS", 300),
        expiry_sweep_seconds=_float(env, "TRADEGUARD_EXPIRY_SWEEP_SECONDS", 5.0),
        client_key_cache_seconds=_float(env, "TRADEGUARD_CLIENT_KEY_CACHE_SECONDS", 30.0),
        login_limit_per_email=_rate_limit(env, "TRADEGUARD_LOGIN_LIMIT_PER_EMAIL", "10 per 15 minutes"),
        login_limit_per_address=_rate_limit(env, "TRADEGUARD_LOGIN_LIMIT_PER_ADDRESS", "50 per 15 minutes"),
        register_limit_per_address=_rate_limit(env, "TRADEGUARD_REGISTER_LIMIT_PER_ADDRESS", "20 per hour"),
        trusted_proxies=_int(env, "TRADEGUARD_TRUSTED_PROXIES", 0, minimum=0),
        magic=_int(env, "TRADEGUARD_MAGIC", DEFAULT_MAGIC),
        deviation_points=_int(env, "TRADEGUARD_DEVIATION_POINTS", 20, minimum=0),
        max_price_retries=_int(env, "TRADEGUARD_MAX_PRICE_RETRIES", 3, minimum=0),
        terminal_timeout_seconds=_float(env, "TRADEGUARD_TERMINAL_TIMEOUT_SECONDS", 10.0),
        unknown_outcome_grace_seconds=_float(env, "TRADEGUARD_UNKNOWN_OUTCOME_GRACE_SECONDS", 3.0),
        execution_max_retries=_int(env, "TRADEGUARD_EXECUTION_MAX_RETRIES", 5, minimum=0),
        account_check_timeout_seconds=_float(env, "TRADEGUARD_ACCOUNT_CHECK_TIMEOUT_SECONDS", 5.0),
        reconcile_interval_seconds=_float(env, "TRADEGUARD_RECONCILE_INTERVAL_SECONDS", 10.0),
        guard_confirm_seconds=_float(env, "TRADEGUARD_GUARD_CONFIRM_SECONDS", 0.2),
        guard_watch_seconds=_float(env, "TRADEGUARD_GUARD_WATCH_SECONDS", 0.5),
        guard_sweep_seconds=_float(env, "TRADEGUARD_GUARD_SWEEP_SECONDS", 5.0),
        reconcile_batch_size=_int(env, "TRADEGUARD_RECONCILE_BATCH_SIZE", 100),
        snapshot_full_days=full_days,
        snapshot_minute_days=minute_days,
        reconcile_threads=_int(env, "TRADEGUARD_RECONCILE_THREADS", 100),
        reconcile_lock_seconds=_float(env, "TRADEGUARD_RECONCILE_LOCK_SECONDS", 150.0),
        breaker_failures=_int(env, "TRADEGUARD_BREAKER_FAILURES", 3),
        breaker_first_backoff_seconds=_float(env, "TRADEGUARD_BREAKER_FIRST_BACKOFF_SECONDS", 30.0),
        breaker_max_backoff_seconds=_float(env, "TRADEGUARD_BREAKER_MAX_BACKOFF_SECONDS", 600.0),
        match_volume_percent=_decimal(env, "TRADEGUARD_MATCH_VOLUME_PERCENT", Decimal(5)),
        match_price_pips=_decimal(env, "TRADEGUARD_MATCH_PRICE_PIPS", Decimal(2)),
        slippage_pips=_decimal(env, "TRADEGUARD_SLIPPAGE_PIPS", Decimal(5)),
        volume_divergence_percent=_decimal(env, "TRADEGUARD_VOLUME_DIVERGENCE_PERCENT", Decimal(10)),
        stop_divergence_pips=_decimal(env, "TRADEGUARD_STOP_DIVERGENCE_PIPS", Decimal(10)),
        terminal_urls=_terminal_urls(env),
        # The embedded setup runs on one machine, its receivers too: private addresses allowed there.
        webhook_allow_private=_bool(
            env, "TRADEGUARD_WEBHOOK_ALLOW_PRIVATE", default=database_url.startswith("sqlite")
        ),
        webhook_timeout_seconds=_float(env, "TRADEGUARD_WEBHOOK_TIMEOUT_SECONDS", 5.0),
        webhook_retry_scale=_float(env, "TRADEGUARD_WEBHOOK_RETRY_SCALE", 1.0),
        secrets_generated=generated,
    )


def describe(settings: Settings) -> str:
    """One line for the log saying which database and broker are in use, without passwords."""
    from sqlalchemy.engine import make_url

    db = make_url(settings.database_url).render_as_string(hide_password=True)
    if settings.redis_url:
        broker = make_url(settings.redis_url).render_as_string(hide_password=True)
        broker_kind = "Redis"
    else:
        broker = f"filesystem://{settings.broker_dir}"
        broker_kind = "embedded filesystem broker"
    db_kind = "embedded SQLite" if settings.uses_embedded_database else "Postgres"
    return f"database: {db} ({db_kind}); broker: {broker} ({broker_kind})"


def start_line(process: str, settings: Settings) -> str:
    """The line each process logs as it starts: which process it is, and which database and broker it
    uses (so that a process started on the embedded defaults by mistake says so at once)."""
    return f"TradeGuard {process}: {describe(settings)}"
