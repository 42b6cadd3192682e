"""Start real Celery processes (worker, beat) for integration tests, and stop them afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.2) -> bool:
    """Poll `predicate` until it is truthy or `timeout` seconds pass; whether it became truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class CeleryProcess:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches the pool children
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery exited with {self.proc.returncode}:\n{self.log()}")
            return text in self.log()

        if not wait_for(seen, timeout=timeout, interval=0.1):
            raise TimeoutError(f"{text!r} not seen in {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, with no chance to clean up (release locks)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


@contextmanager
def celery_worker(
    *, concurrency: int = 1, env: dict[str, str] | None = None, name: str = "test"
) -> Iterator[CeleryProcess]:
    log_dir = Path(tempfile.mkdtemp(prefix="tg-celery-"))
    worker = CeleryProcess(
        [
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            f"--hostname={name}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        _env(env),
        log_dir / "worker.log",
    )
    try:
        worker.wait_for_log("ready.")
        yield worker
    finally:
        worker.stop()


@contextmanager
def celery_beat(*, env: dict[str, str] | None = None) -> Iterator[CeleryProcess]:
    log_dir = Path(tempfile.mkdtemp(prefix="tg-beat-"))
    beat = CeleryProcess(
        ["beat", "--loglevel=INFO", f"--schedule={log_dir / 'schedule'}"], _env(env), log_dir / "beat.log"
    )
    try:
        beat.wait_for_log("beat: Starting")
        yield beat
    finally:
        beat.stop()


def procfile_command(name: str) -> str:
    """The command of the Procfile's `name` process, as honcho would run it (through /bin/sh)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        process, _, command = line.partition(":")
        if process.strip() == name:
            return command.strip()
    raise LookupError(f"no {name} process in the Procfile")


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def declared_terminal_port() -> int:
    """A free port among those declared as terminals for this test run (tests/conftest.py declares them
    in TRADEGUARD_TERMINALS): a terminal started there is one every TradeGuard process will reach."""
    import socket

    for port in map(int, os.environ["TRADEGUARD_TEST_TERMINAL_PORTS"].split(",")):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the terminal server binds
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("every declared test terminal port is in use")


@contextmanager
def terminal_server(
    port: int | None = None, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> Iterator[int]:
    """A real `terminal` process (the simulated MT5 terminal over RPyC) on a free declared port; yields
    the port. `args` are further command-line options (e.g. `["--latency-mode", "reply"]`)."""
    import socket

    port = port or declared_terminal_port()
    log_dir = Path(tempfile.mkdtemp(prefix="tg-terminal-"))
    log = open(log_dir / "terminal.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.terminal", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=ROOT,
        env=_env(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((log_dir / "terminal.log").read_text()) from None
                time.sleep(0.1)
        yield port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def embedded_env(instance_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Procfile process on the embedded defaults (SQLite and the filesystem broker
    under `instance_dir`), as honcho gives it: nothing on PYTHONPATH, the virtualenv's programs on PATH.
    The tests' secrets and declared terminals are kept; the logging level is the default, INFO."""
    left_out = ("PYTHONPATH", "DATABASE_URL", "REDIS_URL")
    env = {name: value for name, value in os.environ.items() if name not in left_out}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["TRADEGUARD_INSTANCE_DIR"] = str(instance_dir)
    env["LOG_LEVEL"] = "INFO"
    env.update(extra or {})
    return env


class ProcfileProcess:
    """One Procfile line, started as honcho starts it: through /bin/sh -c, from the project root, in a
    process group of its own (honcho signals the group), its output in a log file."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", procfile_command(name)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return text in self.log()

        if not wait_for(seen, timeout=timeout, interval=0.1):
            raise TimeoutError(f"{self.name}: {text!r} not seen in {timeout} s:\n{self.log()}")

    def group_alive(self) -> bool:
        self.proc.poll()  # reaps the process once it exits, so that the group empties
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        if self.group_alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextmanager
def procfile_processes(names: Sequence[str], env: dict[str, str]) -> Iterator[dict[str, ProcfileProcess]]:
    """The named Procfile processes, started together as honcho starts them; whatever is left of them is
    killed afterwards."""
    log_dir = Path(tempfile.mkdtemp(prefix="tg-procfile-"))
    started = {name: ProcfileProcess(name, env, log_dir / f"{name}.log") for name in names}
    try:
        yield started
    finally:
        for process in started.values():
            process.kill()
