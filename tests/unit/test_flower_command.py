"""How Flower is started: credentials always, and a longer wait for replies on the filesystem broker."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from tests.processes import ROOT
from workers import flower


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("TRADEGUARD_INSTANCE_DIR", str(tmp_path))
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    return tmp_path


def test_without_configured_credentials_one_password_is_generated_and_kept_private(instance):
    first = flower.basic_auth()
    user, password = first.split(":")
    assert user == "admin" and len(password) >= 16
    assert flower.basic_auth() == first  # kept, not generated anew
    mode = (instance / "flower-auth").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_configured_credentials_must_name_a_user_and_a_password(instance, monkeypatch):
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:secret")
    assert flower.flower_environment()["FLOWER_BASIC_AUTH"] == "ops:secret"
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "no-colon")
    with pytest.raises(SystemExit, match="user:password"):
        flower.basic_auth()


def test_the_credentials_go_to_flower_in_its_environment_never_on_its_command_line(instance):
    password = flower.basic_auth().split(":", 1)[1]
    assert not [arg for arg in flower.flower_command() if password in arg or "basic" in arg]
    assert flower.flower_environment()["FLOWER_BASIC_AUTH"] == f"admin:{password}"


def test_the_filesystem_broker_gets_a_longer_wait_for_worker_replies(instance, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert "--inspect_timeout=3000" in flower.flower_command()
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/15")
    assert not any(arg.startswith("--inspect_timeout") for arg in flower.flower_command())


def test_flower_runs_in_its_own_process_from_this_module_not_from_celery_directly(instance):
    command = flower.flower_command()
    assert command[1:6] == ["-m", "workers.flower", "--serve", "-A", "workers.celery_app"]
    assert command[6] == "flower"


# A process shaped like Flower: its SIGTERM handler raises SystemExit, and a thread it does not
# mark as a daemon keeps the interpreter's exit waiting (as a stuck stop does).
STUCK_STOP = """
import signal, sys, threading, time
from workers.flower import stop_within

def flower_handler(signum, frame):
    sys.exit(0)

handler = stop_within({seconds}, flower_handler) if {deadline} else flower_handler
signal.signal(signal.SIGTERM, handler)
if {stuck}:
    threading.Thread(target=time.sleep, args=(3600,)).start()
print("ready", flush=True)
time.sleep(3600)
"""


def _started(deadline: bool, stuck: bool) -> subprocess.Popen[str]:
    code = STUCK_STOP.format(seconds=0.5, deadline=deadline, stuck=stuck)
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_a_stop_that_hangs_is_ended_at_the_deadline():
    without = _started(deadline=False, stuck=True)
    try:
        without.terminate()
        with pytest.raises(subprocess.TimeoutExpired):
            without.wait(timeout=2)  # the hang the deadline is for
    finally:
        without.kill()
        without.communicate()

    process = _started(deadline=True, stuck=True)
    process.terminate()
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "not stopped 0.5 s after signal 15, ending it now" in stderr


def test_a_stop_that_ends_by_itself_is_left_alone():
    process = _started(deadline=True, stuck=False)
    process.terminate()
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "ending it now" not in stderr


def test_serve_puts_the_deadline_on_flowers_own_handler(monkeypatch):
    import celery.__main__ as celery_entry
    import flower.command as flower_cli

    original = flower_cli.sigterm_handler
    seen = {}

    def fake_celery_main():
        seen["handler"] = flower_cli.sigterm_handler
        seen["argv"] = list(sys.argv)

    monkeypatch.setattr(flower_cli, "sigterm_handler", original)  # put back after the test
    monkeypatch.setattr(celery_entry, "main", fake_celery_main)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    flower.main(["--serve", "-A", "workers.celery_app", "flower", "--port=1"])
    assert seen["argv"] == ["celery", "-A", "workers.celery_app", "flower", "--port=1"]
    assert seen["handler"] is not original
    assert seen["handler"].__qualname__ == "stop_within.<locals>.handler"
