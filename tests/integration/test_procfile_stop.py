"""Ctrl-C on `./bin/run` (the embedded setup): honcho sends SIGTERM to each process's group and SIGKILLs
whatever is left after its grace period. Each process must stop cleanly within it: its own exit status 0,
nothing logged as an error. The workers used to log ERROR lines (their pool processes killed by the
group's SIGTERM) and outlive the grace on the filesystem broker, to be SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from honcho.manager import KILL_WAIT as HONCHO_GRACE_SECONDS

from tests.processes import ROOT, declared_terminal_port, embedded_env, procfile_processes, wait_for

# The reconciler has synced an account through the terminal process before it is stopped, so that its
# sync threads and pooled terminal connections exist when the stop comes.
SEED_AN_ACCOUNT = """
import sys
from shared.core import extensions
from shared.core.db import db
from shared.identity import accounts, users
from web import create_app

app = create_app()
with app.app_context():
    owner = users.register(db.session, "stop@example.com", "a long password")
    accounts.create_account(
        db.session, extensions.secret_box(app), owner, declared_terminals=extensions.declared_terminals(app),
        name="demo", terminal_url=sys.argv[1], login=1001, password="demo", server="TradeGuard-Sim",
        verify=False,  # its terminal starts below, with the other processes
    )
    db.session.commit()
"""


def test_a_stop_as_honcho_sends_it_is_a_clean_warm_shutdown_within_its_grace(embedded_instance):
    terminal_port = declared_terminal_port()
    env = embedded_env(
        embedded_instance,
        {
            "TRADEGUARD_TERMINAL_PORT": str(terminal_port),
            "TRADEGUARD_RECONCILE_INTERVAL_SECONDS": "1",
            "WORKER_CONCURRENCY": "2",
            "RECONCILE_CONCURRENCY": "2",
        },
    )
    subprocess.run(
        [sys.executable, "-c", SEED_AN_ACCOUNT, f"sim://127.0.0.1:{terminal_port}"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    names = ["worker", "reconciler", "beat", "terminal"]
    with procfile_processes(names, env) as processes:
        processes["worker"].wait_for_log("orders@")
        processes["worker"].wait_for_log("ready.")
        processes["reconciler"].wait_for_log("ready.")
        # Beat's tick -> the orders worker enqueues the batch -> the reconciler syncs it on its threads.
        processes["reconciler"].wait_for_log("{'ok': 1}", timeout=60)

        stopped_at: dict[str, float] = {}
        sent_at = time.monotonic()
        for process in processes.values():
            os.killpg(process.proc.pid, signal.SIGTERM)

        def all_stopped() -> bool:
            for name, process in processes.items():
                if name not in stopped_at and not process.group_alive():
                    stopped_at[name] = time.monotonic() - sent_at
            return len(stopped_at) == len(processes)

        wait_for(all_stopped, timeout=HONCHO_GRACE_SECONDS * 3, interval=0.05)
        logs = {name: process.log() for name, process in processes.items()}
        for name, process in processes.items():
            assert name in stopped_at, (name, "still running", logs[name])
            assert stopped_at[name] < HONCHO_GRACE_SECONDS, (name, stopped_at[name], logs[name])
            assert process.proc.returncode == 0, (name, process.proc.returncode, logs[name])
            for sign_of_trouble in ("ERROR", "CRITICAL", "Traceback", "exited with", "WorkerLostError"):
                assert sign_of_trouble not in logs[name], (name, logs[name])
        for worker in ("worker", "reconciler"):
            assert "Warm shutdown" in logs[worker], logs[worker]
