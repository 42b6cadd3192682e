"""The web process exactly as the Procfile starts it (gunicorn with `web.gunicorn_conf`): the errors
gunicorn answers itself, before the app sees the request, are JSON in the API's envelope too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ROOT, _env, free_port, procfile_command, wait_for


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def web_port() -> Iterator[int]:
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # the Procfile names `gunicorn`, as honcho finds it on PATH
    env = _env({"PORT": str(port), "WEB_CONCURRENCY": "1", "WEB_THREADS": "2"})
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    log_path = Path(tempfile.mkdtemp(prefix="tg-web-")) / "web.log"
    with open(log_path, "w") as log:
        # As honcho runs a Procfile line: through the shell, which expands ${PORT:-5000} and the rest.
        proc = subprocess.Popen(
            ["/bin/sh", "-c", procfile_command("web")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = wait_for(lambda: proc.poll() is not None or _healthy(port), timeout=60)
        assert started and proc.poll() is None, log_path.read_text()
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def send_raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as it is and read the answer up to the close: status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_json_error(headers: dict[str, str], body: bytes, code: str) -> dict:
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]
    return dict(error)


def test_an_over_long_request_line_is_414_json_naming_the_url(web_port):
    # gunicorn's limit_request_line is 4094 bytes by default
    status, headers, body = send_raw(
        web_port, b"GET /api/v1/signals?page=" + b"1" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert status == 414
    error = assert_json_error(headers, body, "uri_too_long")
    assert "url" in error["fields"]


def test_an_over_large_header_is_431_json_naming_the_headers(web_port):
    # limit_request_field_size: 8190 bytes by default
    status, headers, body = send_raw(
        web_port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"a" * 9000 + b"\r\n\r\n"
    )
    assert status == 431
    error = assert_json_error(headers, body, "header_fields_too_large")
    assert "headers" in error["fields"]


def test_too_many_headers_is_431_json(web_port):
    # limit_request_fields: 100 by default
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
    status, headers, body = send_raw(web_port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")
    assert status == 431
    assert_json_error(headers, body, "header_fields_too_large")


def test_a_request_gunicorn_cannot_parse_is_400_json(web_port):
    status, headers, body = send_raw(web_port, b"NOT A REQUEST\r\n\r\n")
    assert status == 400
    assert_json_error(headers, body, "bad_request")


def test_the_app_itself_answers_through_the_same_process(web_port):
    status, headers, body = send_raw(
        web_port, b"GET /api/v1/signals HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert status == 401
    assert_json_error(headers, body, "unauthorized")
