"""The Flask app factory. The API is thin: validate, authorise, write, enqueue."""

from __future__ import annotations

import functools
import logging
from typing import Any

import click
import sqlalchemy as sa
from flask import Blueprint, Flask
from flask.sessions import SessionInterface
from flask_migrate import Migrate
from werkzeug.routing import IntegerConverter

from shared.core.config import ConfigurationError, Settings, load_settings, start_line
from shared.core.crypto import SecretBox
from shared.core.db import TCP_KEEPALIVES, check_connections_on_checkout, db
from shared.core.extensions import SECRET_BOX, SETTINGS, TASK_QUEUE, TERMINALS, secret_box
from shared.core.logs import configure_logging
from shared.core.queue import TaskQueue
from shared.signals.auth import ClientKeyCache
from web.errors import TradeGuardApi, register_error_handlers
from web.extensions import CLIENT_KEYS

log = logging.getLogger("tradeguard")

migrate = Migrate()


class IdConverter(IntegerConverter):
    """Row ids in URLs: 1 to 2**31-1. Anything else is a 404, not a database overflow error."""

    def __init__(self, map: Any) -> None:
        super().__init__(map, min=1, max=2**31 - 1)


def _engine_options(settings: Settings) -> dict[str, Any]:
    if settings.uses_embedded_database:
        # Several processes share the SQLite file: wait for a lock rather than fail at once.
        return {"connect_args": {"timeout": 30}}
    # No pool_pre_ping: `check_connections_on_checkout` asks the socket instead of the server.
    # values_plus_batch: the UPDATEs of a flush go to the server in pages (psycopg2's execute_batch)
    # rather than one round trip a row; a crowd's alerts, closes and guard states are hundreds of them
    # (bench/guards.py). Nothing here reads the rowcount of an executemany UPDATE, which it loses.
    return {
        "pool_size": 5,
        "max_overflow": 10,
        "connect_args": dict(TCP_KEEPALIVES),
        "executemany_mode": "values_plus_batch",
    }


def _configure_sqlite(app: Flask) -> None:
    @sa.event.listens_for(db.engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the web server read while a worker writes; foreign keys are off by default.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


class NoCookieSessions(SessionInterface):
    """The API signs nothing into cookies: users send a bearer token, strategy clients a signature.

    Flask's default would still build a signing serializer on every request to look for a session
    cookie; this one leaves `flask.session` a NullSession, which refuses writes with a clear error.
    """

    def open_session(self, app: Flask, request: Any) -> None:
        return None  # Flask then uses make_null_session()

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    configure_logging()
    settings = settings or load_settings()
    if _run_by_the_flask_command():
        # A `flask` command (the release line's migrations, create-admin) is a process of its own. Servers
        # and workers log this line themselves, once per process, labelled with their role.
        log.info(start_line("flask command", settings))
    # No static folder of the app's own: /static is the pages' (web/pages/static).
    app = Flask(__name__, instance_path=str(settings.instance_dir), static_folder=None)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(settings),
        MAX_CONTENT_LENGTH=64 * 1024,
        API_TITLE="TradeGuard",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        # Swagger UI at /api/docs, with its files from the swagger-ui-bundle package served by this app
        # (SWAGGER_UI_FILES below): the page works offline and sends no visitor's browser to a CDN.
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_UI_FILES_URL,
        # Never hand the document's address to swagger.io's online validator.
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},
        API_SPEC_OPTIONS={
            "info": {"description": "Signed trading signals, approved by a person, executed on MT5."},
            "security": [{"bearerAuth": []}],
            "components": {
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
            },
        },
    )
    app.config.update(overrides)
    app.extensions[SETTINGS] = settings
    app.extensions[SECRET_BOX] = SecretBox(
        settings.encryption_keys, check=functools.partial(_keys_match, app, settings, write=False)
    )
    app.extensions[CLIENT_KEYS] = ClientKeyCache(settings.client_key_cache_seconds)
    app.extensions[TERMINALS] = _declared_terminals(settings)
    # A worker puts its own Celery app here instead (workers.celery_app.flask_app).
    app.extensions[TASK_QUEUE] = TaskQueue()
    app.url_map.converters["id"] = IdConverter

    import shared.models  # noqa: F401 - registers every table on the metadata, for Alembic too

    db.init_app(app)
    migrate.init_app(app, db, directory=str(_migrations_dir()), render_as_batch=True)
    with app.app_context():
        if settings.uses_embedded_database:
            _configure_sqlite(app)
        else:
            check_connections_on_checkout(db.engine)
    # Refuses to start with keys other than the stored data was written with (KeysDoNotMatch). If the
    # database cannot say yet, the first use of a secret checks instead (SecretBox).
    box = secret_box(app)
    if _keys_match(app, settings, box.unchecked(), write=True):
        box.mark_checked()
    app.session_interface = NoCookieSessions()

    api = TradeGuardApi(app)
    from web.api import (
        accounts,
        analytics,
        approvals,
        audit,
        auth,
        charts,
        clients,
        exports,
        guards,
        health,
        metrics,
        monitoring,
        risk,
        signals,
        trades,
        webhooks,
    )

    for module in (
        health,
        auth,
        accounts,
        risk,
        clients,
        signals,
        approvals,
        trades,
        monitoring,
        guards,
        webhooks,
        audit,
        exports,
        charts,
        analytics,
    ):
        api.register_blueprint(module.blp)
    # Prometheus' text format, not JSON: kept out of the OpenAPI document.
    app.register_blueprint(metrics.blp)
    # The owner's HTML pages (web.pages): out of the OpenAPI document too.
    from web import pages

    app.register_blueprint(pages.blp)
    app.register_blueprint(_swagger_ui_files())
    register_error_handlers(app)
    from web import throttle

    # Wraps the login and registration views registered above: 429 before any argon2 work.
    throttle.install(app, settings)

    from web.cli import register_cli

    register_cli(app)

    if settings.secrets_generated:
        log.warning(
            "using secrets generated under %s; set TRADEGUARD_* secrets in production", settings.instance_dir
        )
    return app


# Where /api/docs loads Swagger UI's script and style sheet from.
SWAGGER_UI_FILES_URL = "/api/docs/files/"


def _swagger_ui_files() -> Blueprint:
    """Swagger UI's files, from the swagger-ui-bundle package, at SWAGGER_UI_FILES_URL."""
    import swagger_ui_bundle

    return Blueprint(
        "swagger_ui_files",
        __name__,
        static_folder=swagger_ui_bundle.swagger_ui_path,
        static_url_path=SWAGGER_UI_FILES_URL.rstrip("/"),
    )


def _run_by_the_flask_command() -> bool:
    """Whether this app is being built for a `flask ...` command line (Celery's command line is click's
    too, so a click context alone does not tell)."""
    from flask.cli import FlaskGroup

    context = click.get_current_context(silent=True)
    return context is not None and isinstance(context.find_root().command, FlaskGroup)


def _keys_match(app: Flask, settings: Settings, box: SecretBox, *, write: bool) -> bool:
    """The key check (shared.identity.key_check), on a connection of its own: True when this process's
    keys read the stored check (or, with `write`, wrote the first one), KeysDoNotMatch when they do not, False
    when it cannot be done yet: before the migrations have made the table (`flask db upgrade` itself
    runs through here), while the database cannot be reached, or (without `write`: in the middle of a
    request's work) while there is no check yet. Then the process starts, and its next use of a secret
    checks again (SecretBox)."""
    from shared.identity import key_check

    with app.app_context():  # the first use of a secret may be on a thread of a worker's own
        engine = db.engine
    try:
        if not sa.inspect(engine).has_table("key_checks"):
            log.warning("key check deferred: the database is not migrated yet (flask db upgrade)")
            return False
        with sa.orm.Session(engine) as session:
            return key_check.verify(session, box, settings.jwt_secrets, write=write).verified
    except sa.exc.OperationalError as exc:
        log.warning("key check deferred: the database is unreachable (%s)", str(exc).splitlines()[0])
        return False


def _declared_terminals(settings: Settings) -> frozenset[str]:
    from shared.mt5.errors import InvalidTerminalUrl
    from shared.mt5.terminals import declared_terminals

    try:
        return declared_terminals(settings.terminal_urls)
    except InvalidTerminalUrl as exc:
        raise ConfigurationError(f"TRADEGUARD_TERMINALS: {exc}") from None


def _migrations_dir() -> Any:
    from shared.core.config import PROJECT_ROOT

    return PROJECT_ROOT / "migrations"
