"""The Procfile's `worker` line, run as honcho, Heroku-style hosts and systemd run it: from the project
root, through the shell, with nothing exported but the settings (no PYTHONPATH). Its tasks must find
TradeGuard's code; before the project was installed, every task failed with "No module named 'web'"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.processes import ROOT, procfile_command, wait_for


def test_the_procfile_worker_runs_a_task_without_pythonpath(app, committed_db):
    from workers.celery_app import celery_app

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # The Procfile names `celery`, as honcho finds it on PATH.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["WORKER_CONCURRENCY"] = "1"
    log_path = Path(tempfile.mkdtemp(prefix="tg-procfile-worker-")) / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", procfile_command("worker")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_for(lambda: proc.poll() is not None or "ready." in log_path.read_text(), timeout=60)
        assert proc.poll() is None, log_path.read_text()
        result = celery_app.send_task("tradeguard.expire_signals")
        assert wait_for(lambda: "succeeded" in log_path.read_text(), timeout=30), log_path.read_text()
        text = log_path.read_text()
        assert f"Task tradeguard.expire_signals[{result.id}] succeeded" in text, text
        assert "ModuleNotFoundError" not in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
