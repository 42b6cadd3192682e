"""The migrations are the schema: one head, and the models match them on Postgres and on SQLite."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import upgrade

from shared.core.config import PROJECT_ROOT, load_settings
from shared.core.db import db
from web import create_app


def differences(app) -> list:
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
        return compare_metadata(context, db.metadata)


def test_there_is_exactly_one_head():
    from alembic.config import Config

    config = Config(str(PROJECT_ROOT / "migrations" / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    assert len(ScriptDirectory.from_config(config).get_heads()) == 1


def test_models_match_the_migrations_on_postgres(app):
    # The session's database was built by `upgrade()` in the app fixture.
    assert differences(app) == []


def test_migrations_build_sqlite_and_models_match(tmp_path):
    settings = load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)})
    sqlite_app = create_app(settings)
    with sqlite_app.app_context():
        upgrade()
    assert differences(sqlite_app) == []
