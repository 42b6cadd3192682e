"""Fixtures the unit tests share."""

import pytest
from flask_migrate import upgrade

from shared.core.config import load_settings
from shared.core.db import db
from web import create_app


@pytest.fixture
def sqlite_app(tmp_path):
    """The app on the embedded defaults (SQLite in a temporary instance folder), migrated."""
    app = create_app(load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)}))
    with app.app_context():
        upgrade()
    yield app
    with app.app_context():
        db.engine.dispose()
