"""Start Flower with basic auth always on.

Credentials come from FLOWER_BASIC_AUTH (`user:password`); with none set, a password is generated
once and kept in instance/flower-auth so that the embedded setup is never left open. They reach Flower
in its environment (Flower reads FLOWER_<option> variables), never on its command line: `ps` shows any
process's command line to every user of the machine, its environment only to the process and root.

Flower itself runs from this module too (`--serve`), with a deadline on its stop; see `stop_within`.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from shared.core.config import load_settings, start_line
from shared.core.logs import configure_logging

log = logging.getLogger("tradeguard.flower")

# How long Flower may take to stop after a SIGTERM before it is ended at once. Below honcho's 5 s, after
# which it kills the whole process group anyway; Flower stopped in 0.3-1.3 s on this box, loaded or not.
STOP_SECONDS = 4.0


def basic_auth() -> str:
    configured = os.environ.get("FLOWER_BASIC_AUTH", "").strip()
    if configured:
        if ":" not in configured:
            raise SystemExit("FLOWER_BASIC_AUTH must be user:password")
        return configured
    path = load_settings().instance_dir / "flower-auth"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"admin:{secrets.token_urlsafe(12)}")
    return path.read_text().strip()


def flower_command() -> list[str]:
    command = [
        sys.executable,
        "-m",
        "workers.flower",
        "--serve",
        "-A",
        "workers.celery_app",
        "flower",
        f"--port={os.environ.get('FLOWER_PORT', '5555')}",
        f"--address={os.environ.get('FLOWER_ADDRESS', '127.0.0.1')}",
    ]
    if not load_settings().redis_url:
        # On the filesystem broker a worker finds its control messages by polling a folder, and
        # Flower's default one-second wait for their replies missed some workers now and then.
        command.append("--inspect_timeout=3000")
    return command


def flower_environment() -> dict[str, str]:
    """This process's environment, with the credentials Flower must require."""
    return {**os.environ, "FLOWER_BASIC_AUTH": basic_auth()}


def stop_within(
    seconds: float, flower_handler: Callable[[int, FrameType | None], Any]
) -> Callable[[int, FrameType | None], Any]:
    """Flower's SIGTERM handler, with a deadline: the process ends at once `seconds` after the first
    SIGTERM if Flower's own stop has not ended it by then.

    Flower stops by raising SystemExit from its signal handler, wherever its main thread happens to be.
    Once in CI it was still running 15 s after the SIGTERM (tests/integration/test_flower.py); it keeps
    nothing to lose (its task list is in memory, not --persistent), so ending it is safe. The deadline
    is a daemon thread's, so it runs whatever the main thread is stuck in, and it writes straight to
    stderr because a stuck stop may hold the logging lock."""
    started = threading.Event()

    def give_up(signum: int) -> None:
        os.write(2, f"flower: not stopped {seconds:g} s after signal {signum}, ending it now\n".encode())
        os._exit(0)

    def handler(signum: int, frame: FrameType | None) -> Any:
        if not started.is_set():
            started.set()
            deadline = threading.Timer(seconds, give_up, args=(signum,))
            deadline.daemon = True
            deadline.start()
        return flower_handler(signum, frame)

    return handler


def serve(celery_args: list[str]) -> None:
    """Run `celery <celery_args>` (its flower command) in this process, with a deadline on its stop."""
    import flower.command as flower_cli
    from celery.__main__ import main as celery_main

    if not callable(getattr(flower_cli, "sigterm_handler", None)):
        # Flower installs flower.command.sigterm_handler by name when its command starts (2.x).
        raise SystemExit("flower.command.sigterm_handler is gone: see stop_within in workers/flower.py")
    flower_cli.sigterm_handler = stop_within(STOP_SECONDS, flower_cli.sigterm_handler)
    sys.argv = ["celery", *celery_args]
    celery_main()


def main(argv: list[str]) -> None:
    if argv[:1] == ["--serve"]:
        serve(argv[1:])
        return
    if "--print-auth" in argv:
        print(basic_auth())
        return
    configure_logging()
    log.info(start_line("flower", load_settings()))
    # Replaces this process with Flower (`--serve` above), no shell involved.
    os.execve(sys.executable, flower_command(), flower_environment())  # noqa: S606


if __name__ == "__main__":
    main(sys.argv[1:])
