"""Flower's credentials are never on a command line: `ps` shows every process's command line to every
user of the machine. Flower reads them from its environment (FLOWER_BASIC_AUTH), which only the process
itself and root can read."""

from __future__ import annotations

import base64
import http.client
import secrets
from pathlib import Path

import pytest

from tests.processes import embedded_env, free_port, listening, procfile_processes, wait_for


def _status(port: int, auth: str | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/api/workers", headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def _command_lines_of_session(session_id: int) -> dict[int, str]:
    """The command line of every process of the session (the Procfile line's shell, what it execs, and
    anything those start), by pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session_id:  # the fields after the name: state, ppid, pgrp, session
                found[int(stat.parent.name)] = (
                    (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (FileNotFoundError, ProcessLookupError):
            continue  # a process that ended meanwhile
    return found


@pytest.mark.parametrize("credentials_from", ["FLOWER_BASIC_AUTH", "instance/flower-auth"])
def test_flowers_password_is_in_no_command_line_and_still_required(embedded_instance, credentials_from):
    port = free_port()
    password = secrets.token_urlsafe(12)
    if credentials_from == "FLOWER_BASIC_AUTH":
        env = embedded_env(
            embedded_instance, {"FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": f"ops:{password}"}
        )
    else:
        (embedded_instance / "flower-auth").write_text(f"admin:{password}")
        env = embedded_env(embedded_instance, {"FLOWER_PORT": str(port)})
        env.pop("FLOWER_BASIC_AUTH", None)
    credentials = env.get("FLOWER_BASIC_AUTH") or f"admin:{password}"

    with procfile_processes(["flower"], env) as processes:
        flower = processes["flower"]
        assert wait_for(lambda: listening(port), timeout=60), flower.log()
        command_lines = _command_lines_of_session(flower.proc.pid)
        assert any("flower" in line for line in command_lines.values()), command_lines
        assert not [line for line in command_lines.values() if password in line], command_lines

        assert _status(port) == 401
        assert _status(port, f"{credentials.split(':')[0]}:wrong-{password}") == 401
        assert _status(port, credentials) == 200
        assert password not in flower.log()
