"""Flower, as the Procfile starts it: basic auth always on, and the real workers listed."""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.processes import ROOT, _env, celery_worker, free_port, listening, wait_for


def _get(port: int, path: str, auth: str | None = None) -> tuple[int, bytes]:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_flower_needs_its_basic_auth_and_lists_the_running_worker():
    port = free_port()
    env = _env({"FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": "ops:flower-test-password"})
    log_path = Path(tempfile.mkdtemp(prefix="tg-flower-")) / "flower.log"
    with celery_worker(name="flowertest") as worker, open(log_path, "w") as log:
        flower = subprocess.Popen(
            [sys.executable, "-m", "workers.flower"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            assert wait_for(lambda: listening(port), timeout=30), log_path.read_text()
            assert _get(port, "/api/workers")[0] == 401
            assert _get(port, "/api/workers", auth="ops:wrong")[0] == 401

            listed: list[str] = []

            def worker_listed() -> bool:
                status, body = _get(port, "/api/workers?refresh=1", auth="ops:flower-test-password")
                assert status == 200
                listed[:] = list(json.loads(body))
                return any(name.startswith("flowertest@") for name in listed)

            assert wait_for(worker_listed, timeout=30, interval=1), (listed, worker.log())
        finally:
            flower.terminate()
            flower.wait(timeout=15)
