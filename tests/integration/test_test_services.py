"""The test set-up's throw-away servers (tests/services.py), for real: `./bin/test` starts them on a machine
where no PostgreSQL or Redis answers, and whatever the run uses (`.ci/run` has the machine's) this is the
test of that path: started, answering, stopped with nothing left behind, also when the run is
interrupted. On a platform without the wheels it fails with the error `./bin/test` would give there
(naming the variables to set): never a skip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg2
import pytest
import redis

from tests.processes import ROOT, wait_for
from tests.services import services


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_throw_away_servers_answer_and_leave_nothing_behind():
    with services("throwaway", environ={}) as chosen:
        assert chosen.postgres.origin == chosen.redis.origin == "throw-away"
        assert chosen.folder is not None and chosen.folder.is_dir()
        assert chosen.postgres.process is not None and chosen.redis.process is not None
        groups = [chosen.postgres.process.pid, chosen.redis.process.pid]
        connection = psycopg2.connect(chosen.postgres.url)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        connection.close()
        assert redis.Redis.from_url(chosen.redis.url).ping()
        assert chosen.line().startswith(">> services: PostgreSQL 127.0.0.1:")
        folder = chosen.folder
    assert all(_group_gone(pid) for pid in groups)  # the servers, and PostgreSQL's backends
    assert not folder.exists()


# What ./bin/test runs, pytest, stands in here for a program that connects to both servers, says so, and
# waits to be interrupted: it stops on SIGINT as pytest does (KeyboardInterrupt), saying so.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    import psycopg2, redis
    psycopg2.connect(os.environ["TEST_DATABASE_URL"]).close()
    redis.Redis.from_url(os.environ["TEST_REDIS_URL"]).ping()
    print("ready", flush=True)
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        print("child stopped", flush=True)
        sys.exit(3)
    """
)
RUNNER = "import sys; from tests.services import run; sys.exit(run([sys.executable, '-c', sys.argv[1]]))"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_run_stops_the_child_then_its_servers(tmp_path: Path, signum: int):
    output = tmp_path / "output"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRADEGUARD_TEST_SERVICES": "throwaway"}
    with open(output, "w") as out:
        runner = subprocess.Popen(
            [sys.executable, "-c", RUNNER, CHILD],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,  # no terminal: the runner passes the signal on itself
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_for(lambda: "ready" in output.read_text() or runner.poll() is not None, timeout=30)
        text = output.read_text()
        assert "ready" in text, text
        first = text.splitlines()[0]
        assert first.startswith(">> services: PostgreSQL 127.0.0.1:") and "(throw-away)" in first, first
        folder = Path(first.rsplit(" in ", 1)[1])
        runner_pid, *servers = map(int, (folder / "pids").read_text().split())
        assert runner_pid == runner.pid and len(servers) == 2
        runner.send_signal(signum)
        assert runner.wait(timeout=30) == 3  # the child's status: it was asked to stop, and did
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    assert "child stopped" in output.read_text()
    assert all(_group_gone(pid) for pid in servers)
    assert not folder.exists()
