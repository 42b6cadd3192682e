"""The Procfile runs the reconciler at a lower CPU priority than the orders worker: on a machine they
share, reconciliation's bursts (every account, every 10 s) yield the processor to orders instead of
doubling an order's time from approval to order_send (bench/approval.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.procfs import descendants
from tests.processes import ROOT, procfile_command, wait_for


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def celery_processes(pid: int) -> list[int]:
    shells = {"sh", "dash", "bash"}
    found = [p for p in descendants(pid) if Path(f"/proc/{p}/comm").read_text().strip() not in shells]
    assert len(found) >= 2, found  # the main process and at least one pool process
    return found


def start(name: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(
            ["/bin/sh", "-c", procfile_command(name)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_the_reconciler_runs_at_a_lower_priority_than_the_orders_worker(app, committed_db):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"WORKER_CONCURRENCY": "1", "RECONCILE_CONCURRENCY": "1"})
    logs = Path(tempfile.mkdtemp(prefix="tg-procfile-priorities-"))
    ours = os.nice(0)
    procs = {name: start(name, env, logs / f"{name}.log") for name in ("worker", "reconciler")}
    try:
        for name, proc in procs.items():
            log = logs / f"{name}.log"
            assert wait_for(lambda p=proc, lg=log: p.poll() is not None or "ready." in lg.read_text(), 60)
            assert proc.poll() is None, log.read_text()
        # Every Celery process of each (the shell that started it aside): the main one and its pool.
        reconciler = {nice_of(pid) for pid in celery_processes(procs["reconciler"].pid)}
        worker = {nice_of(pid) for pid in celery_processes(procs["worker"].pid)}
        assert reconciler == {min(19, ours + 10)}
        assert worker == {ours}
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=30)
