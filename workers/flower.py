"""Start Flower with basic auth always on.

Credentials come from FLOWER_BASIC_AUTH (`user:password`); with none set, a password is generated
once and kept in instance/flower-auth so that the embedded setup is never left open. They reach Flower
in its environment (Flower reads FLOWER_<option> variables), never on its command line: `ps` shows any
process's command line to every user of the machine, its environment only to the process and root.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys

from shared.core.config import load_settings, start_line
from shared.core.logs import configure_logging

log = logging.getLogger("tradeguard.flower")


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
        "celery",
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


def main(argv: list[str]) -> None:
    if "--print-auth" in argv:
        print(basic_auth())
        return
    configure_logging()
    log.info(start_line("flower", load_settings()))
    # Replaces this process with Flower, no shell involved.
    os.execve(sys.executable, flower_command(), flower_environment())  # noqa: S606


if __name__ == "__main__":
    main(sys.argv[1:])
