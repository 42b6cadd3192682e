"""gunicorn settings of the web process: `gunicorn -c python:web.gunicorn_conf ... web.wsgi:app` (the
Procfile; bench/ingest.py serves every app it compares the same way).

gunicorn answers some requests itself, before the app sees them: a request line longer than
`limit_request_line` (414), more or larger headers than `limit_request_fields` /
`limit_request_field_size` allow (431), a request it cannot parse (400), and a crash outside the app
(500). Its pages for those are HTML; every other error of the API is JSON in one envelope
(`web.errors.error_envelope`), and a client should have one shape to read.

Why replacing `gunicorn.util.write_error`: gunicorn has no setting for its error pages. Every worker
class (sync, gthread, gevent) reports these errors through `Worker.handle_error`, which decides the
status, reason and message and then calls `util.write_error(sock, status, reason, message)` to write
the page, so that function is the one place where only the format changes. Overriding `handle_error`
instead would mean a worker subclass per worker class, each repeating gunicorn's mapping of its
exceptions to statuses. It is replaced in `post_worker_init`, in each worker after it has loaded the
app and before it accepts a connection, so the arbiter itself is left as gunicorn made it.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any

from gunicorn import util

# What gunicorn refused, named as `fields` names it in every other error.
_FIELD_OF_STATUS = {414: "url", 431: "headers"}


def json_error_page(status: int, reason: str, message: str) -> bytes:
    """The whole HTTP response gunicorn writes for an error, with the JSON envelope as its body."""
    from web.errors import error_envelope

    text = message or reason
    field = _FIELD_OF_STATUS.get(status)
    envelope = error_envelope(status, text, fields={field: [text]} if field else None)
    body = json.dumps(envelope).encode()  # ASCII: ensure_ascii escapes whatever the request carried
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """`gunicorn.util.write_error`, answering in JSON (same arguments, same non-blocking write)."""
    util.write_nonblock(sock, json_error_page(status_int, reason, mesg))


def on_starting(server: Any) -> None:
    """The master's first line after gunicorn's own: which database and broker the web process uses (its
    workers build the app from the same settings). A setting that cannot be read is left for the workers
    to report as they fail to boot."""
    from shared.core.config import ConfigurationError, load_settings, start_line

    with contextlib.suppress(ConfigurationError):
        server.log.info(start_line("web", load_settings()))


def post_worker_init(worker: Any) -> None:
    from shared.core.extensions import warm_task_queue

    util.write_error = write_json_error
    warm_task_queue(worker.wsgi)
