"""Test set-up.

Integration tests run against real PostgreSQL and Redis servers: those named by TEST_DATABASE_URL and
TEST_REDIS_URL, which `./bin/test` sets to the servers it chose or started (tests/services.py: the
machine's, or throw-away ones). A throw-away database is created on that PostgreSQL for the session (and
dropped after it), migrations build its schema, and each test runs in a transaction that is rolled back.
Tests that need committed rows (a real Celery worker reads them from another process) use
`committed_db`, which truncates afterwards.

Run without `./bin/test` (plain pytest) and without those servers, the integration tests are skipped
with a message saying what is missing; with CI=true the run fails instead.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from tests.services import LOCAL_DATABASE_URL, LOCAL_REDIS_URL, database_url_from_env

# The server the session's database is created on (TEST_DATABASE_ADMIN_URL is its old name), and Redis.
ADMIN_URL = (database_url_from_env() or ("", LOCAL_DATABASE_URL))[1]
REDIS_URL = os.environ.get("TEST_REDIS_URL") or LOCAL_REDIS_URL
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_state: dict[str, Any] = {"problem": None, "database": None}


def _pg_url(database: str) -> str:
    url = sa.make_url(ADMIN_URL).set(drivername="postgresql+psycopg2", database=database)
    return url.render_as_string(hide_password=False)


def _services_problem() -> str | None:
    try:
        engine = sa.create_engine(
            _pg_url(sa.make_url(ADMIN_URL).database or "test"), connect_args={"connect_timeout": 3}
        )
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL at {ADMIN_URL} unreachable: {exc}"
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis at {REDIS_URL} unreachable: {exc}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    # Every process started from here (the app, Celery workers, beat) reads these.
    instance_dir = tempfile.mkdtemp(prefix="tradeguard-test-")
    os.environ["TRADEGUARD_INSTANCE_DIR"] = instance_dir
    os.environ["TRADEGUARD_SECRET_KEY"] = "test-secret-key"
    os.environ["TRADEGUARD_JWT_SECRET"] = "test-jwt-secret-that-is-long-enough-for-hs256"
    os.environ["TRADEGUARD_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # The suite registers hundreds of users from 127.0.0.1 within minutes, far past the production
    # default; the throttle's own tests build apps with the limits they test.
    os.environ.setdefault("TRADEGUARD_REGISTER_LIMIT_PER_ADDRESS", "1000000 per hour")
    _declare_test_terminals()
    _cheap_password_hashing()

    problem = _services_problem()
    if problem:
        if IN_CI:
            raise pytest.UsageError(f"CI needs PostgreSQL and Redis: {problem}")
        _state["problem"] = f"{problem} (./bin/test starts throw-away servers when none answers)"
        return
    database = f"tradeguard_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(_pg_url(sa.make_url(ADMIN_URL).database or "test"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    _state["database"] = database
    os.environ["DATABASE_URL"] = _pg_url(database)
    os.environ["REDIS_URL"] = REDIS_URL
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def _cheap_password_hashing() -> None:
    """argon2 at its production cost (64 MiB, 3 passes) takes about 0.3 s a hash here, and the suite
    signs up and in hundreds of users in this process: the same argon2id code at the lowest cost it
    takes. Processes the tests start (web, workers) keep the production cost."""
    from argon2 import PasswordHasher

    from shared.identity import users

    users._hasher = PasswordHasher(time_cost=1, memory_cost=32, parallelism=4)


def _declare_test_terminals() -> None:
    """Terminals are operator-declared (TRADEGUARD_TERMINALS), read by every process at start-up. The
    tests' terminal processes listen on ports chosen here, once, and declared for the whole run, so the
    app, eager tasks and every worker process the tests start see the same list. Port 1 (nothing
    listens there) is declared too: the tests of unreachable terminals use it."""
    from tests.processes import free_port

    ports: list[int] = []
    while len(ports) < 12:
        port = free_port()
        if port not in ports:
            ports.append(port)
    os.environ["TRADEGUARD_TEST_TERMINAL_PORTS"] = ",".join(map(str, ports))
    urls = ["sim://", "sim://127.0.0.1:1"]
    urls += [f"{scheme}://127.0.0.1:{port}" for port in ports for scheme in ("sim", "mt5linux")]
    os.environ["TRADEGUARD_TERMINALS"] = ",".join(urls)


def pytest_unconfigure(config: pytest.Config) -> None:
    database = _state.get("database")
    if database:
        admin = sa.create_engine(
            _pg_url(sa.make_url(ADMIN_URL).database or "test"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
            if _state["problem"]:
                item.add_marker(pytest.mark.skip(reason=_state["problem"]))


# --- the app on Postgres -------------------------------------------------------------------------


@dataclass(frozen=True)
class SentTask:
    name: str
    args: list[Any]
    options: dict[str, Any]


class RecordingQueue:
    """Stands in for an app's task queue (`shared.core.queue.TaskQueue`): keeps what would have been
    sent, with its options, and sends nothing. The broker check (readiness) is still the real queue's."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.sent: list[SentTask] = []

    def send(self, task_name: str, args: Any, **options: Any) -> None:
        self.sent.append(SentTask(task_name, list(args), dict(options)))

    def check_broker(self, timeout_seconds: float) -> None:
        self.real.check_broker(timeout_seconds)

    def executions(self) -> list[int]:
        """The signal ids execution tasks were sent for, in order."""
        from shared.core.queue import EXECUTE_SIGNAL

        return [task.args[0] for task in self.sent if task.name == EXECUTE_SIGNAL]


@contextmanager
def recording_tasks(*apps: Any) -> Iterator[RecordingQueue]:
    """The task queue of each app replaced by one `RecordingQueue` for the duration of the block (the
    test's app, and the worker's, `workers.celery_app.flask_app()`, under which tasks run)."""
    from shared.core.extensions import TASK_QUEUE

    originals = [(app, app.extensions[TASK_QUEUE]) for app in apps]
    # Already recording (db_session and sent_tasks together): one record for both.
    recording = [queue for _, queue in originals if isinstance(queue, RecordingQueue)]
    queue = recording[0] if recording else RecordingQueue(originals[0][1])
    for app, _ in originals:
        app.extensions[TASK_QUEUE] = queue
    try:
        yield queue
    finally:
        for app, original in originals:
            app.extensions[TASK_QUEUE] = original


@pytest.fixture
def sent_tasks(app: Any) -> Iterator[RecordingQueue]:
    """What the code under test enqueued, in the web's app or in the worker's, instead of sending it."""
    from workers.celery_app import flask_app

    with recording_tasks(app, flask_app()) as queue:
        yield queue


@pytest.fixture(scope="session")
def app() -> Iterator[Any]:
    from flask_migrate import upgrade

    from shared.core.config import load_settings
    from web import create_app

    application = create_app(load_settings(), TESTING=True)
    with application.app_context():
        upgrade()  # the schema comes from the migrations, exactly as in production
    yield application


@pytest.fixture
def db_session(app: Any) -> Iterator[Any]:
    """The app's session inside one outer transaction that is rolled back after the test.

    Commits made by the code under test only release a savepoint. Flask-SQLAlchemy picks its engine
    per query, so the engine entry is pointed at the test's connection for the test's duration.
    """
    from shared.core.db import db

    # Ids restart after committed_db truncates: a cached secret must not outlive its row.
    app.extensions["tradeguard.client_keys"].clear()
    with app.app_context():
        engine = db.engine
        connection = engine.connect()
        outer = connection.begin()
        engines = db.engines
        engines[None] = connection  # type: ignore[assignment]
        db.session.remove()
        factory_options = db.session.session_factory.kw
        factory_options["join_transaction_mode"] = "create_savepoint"
        # Rows made here are rolled back: tasks the code under test enqueues (approvals send an
        # execution task after commit) would reach no row, so they are recorded instead of sent.
        try:
            with recording_tasks(app):
                yield db.session
        finally:
            db.session.remove()
            del factory_options["join_transaction_mode"]
            engines[None] = engine
            outer.rollback()
            connection.close()


@pytest.fixture
def committed_db(app: Any) -> Iterator[Any]:
    """Real commits, visible to other processes; every table is emptied afterwards."""
    from shared.core.db import db

    app.extensions["tradeguard.client_keys"].clear()
    with app.app_context():
        yield db.session
        db.session.remove()
        tables = ", ".join(f'"{t.name}"' for t in reversed(db.metadata.sorted_tables))
        with db.engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def client(app: Any, db_session: Any) -> Any:
    return app.test_client()


# --- helpers for API tests -----------------------------------------------------------------------


# A valid buy signal with every optional price: the body most tests send.
GOOD_SIGNAL = {
    "instrument": "EURUSD",
    "side": "buy",
    "volume": "0.10",
    "price": "1.1000",
    "sl": "1.0950",
    "tp": "1.1100",
}


class Api:
    """A small driver for the API: users, tokens, accounts, clients and signed signals."""

    def __init__(self, http: Any):
        self.http = http
        # One MT5 account (login, server) can be added once: each account of a test gets its own login,
        # the first 1001, the login the `terminal` fixture (tests/integration/conftest.py) is on.
        self._logins = itertools.count(1001)
        self._used_logins: set[int] = set()

    def register(self, email: str | None = None, password: str = "correct horse") -> dict[str, Any]:
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
        response = self.http.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert response.status_code == 201, response.json
        return {"email": email, "password": password, **response.json}

    def login(self, email: str, password: str) -> dict[str, str]:
        response = self.http.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert response.status_code == 200, response.json
        return {"Authorization": f"Bearer {response.json['access_token']}"}

    def user(self) -> dict[str, Any]:
        """A registered user with `headers` for bearer auth."""
        user = self.register()
        return {**user, "headers": self.login(user["email"], user["password"])}

    def account(self, user: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        """A new account of `user` (201 asserted). On `sim://`, this process's simulated terminal, which
        the API logs in to first; a test on a terminal that is not running passes `verify=False`."""
        body = {
            "name": f"acct-{uuid.uuid4().hex[:6]}",
            "terminal_url": "sim://",
            "login": overrides.get("login") or self._unused_login(),
            "password": "broker-pass",
            "server": "TradeGuard-Sim",
            **overrides,
        }
        response = self.http.post("/api/v1/accounts", json=body, headers=user["headers"])
        assert response.status_code == 201, response.json
        self._used_logins.add(body["login"])
        return dict(response.json)

    def _unused_login(self) -> int:
        login = next(self._logins)
        while login in self._used_logins:
            login = next(self._logins)
        return login

    def strategy_client(self, user: dict[str, Any], account_id: int) -> dict[str, Any]:
        response = self.http.post(
            "/api/v1/clients", json={"name": "strategy", "account_id": account_id}, headers=user["headers"]
        )
        assert response.status_code == 201, response.json
        return dict(response.json)

    def setup(self) -> dict[str, Any]:
        """A user with one account and one strategy client."""
        user = self.user()
        account = self.account(user)
        strategy = self.strategy_client(user, account["id"])
        return {"user": user, "account": account, "client": strategy}

    def decide(self, user: dict[str, Any], signal_id: int, decision: str = "approve") -> dict[str, Any]:
        """The owner's decision on a signal; the approval as the API returns it (201 asserted)."""
        response = self.http.post(
            "/api/v1/approvals", json={"signal_id": signal_id, "decision": decision}, headers=user["headers"]
        )
        assert response.status_code == 201, response.json
        return dict(response.json)

    @staticmethod
    def signed_headers(
        strategy: dict[str, Any], body: bytes, *, timestamp: int | None = None, key: str | None = None
    ) -> dict[str, str]:
        from shared.core.signing import sign

        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": "application/json",
            "X-Client-Id": str(strategy["id"]),
            "X-Timestamp": ts,
            "X-Signature": sign(strategy["secret"], ts, body),
        }
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def send_signal(
        self,
        strategy: dict[str, Any],
        payload: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        **kw: Any,
    ) -> Any:
        payload = payload or GOOD_SIGNAL
        body = json.dumps(payload).encode()
        return self.http.post(
            "/api/v1/signals", data=body, headers=self.signed_headers(strategy, body, key=key, **kw)
        )


@pytest.fixture
def api(client: Any) -> Api:
    return Api(client)
