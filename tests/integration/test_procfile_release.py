"""The Procfile's `release` line, run as Heroku-style hosts (and `bin/run`) run it: from the project root,
through the shell, with nothing exported but the settings. It migrates an empty database to the head
revision, and running it again changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests.processes import ROOT, procfile_command


def _release(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-c", procfile_command("release")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_release_line_migrates_an_empty_database_and_is_safe_to_run_again():
    server = sa.make_url(os.environ["DATABASE_URL"])
    name = f"tg_release_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    database_url = server.set(database=name).render_as_string(hide_password=False)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # The Procfile names `flask`, as honcho finds it on PATH.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DATABASE_URL"] = database_url
    engine = sa.create_engine(database_url)
    try:
        first = _release(env)
        assert first.returncode == 0, first.stdout + first.stderr
        with engine.connect() as conn:
            head = conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
            tables = set(sa.inspect(conn).get_table_names())
        assert head == _head_revision()
        assert {"users", "accounts", "signals", "trades", "audit_log", "key_checks"} <= tables

        again = _release(env)
        assert again.returncode == 0, again.stdout + again.stderr
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == head
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head
