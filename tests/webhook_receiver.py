"""A real HTTP receiver for webhook tests: http.server on 127.0.0.1 in a thread, answering from a script
and keeping every request it got."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared.core.signing import signature_matches


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def signed_by(self, secret: str) -> bool:
        """Whether X-Signature is the HMAC of "{X-Timestamp}.{body}" with `secret`, checked the way a
        receiver would."""
        return signature_matches(secret, self.headers["X-Timestamp"], self.body, self.headers["X-Signature"])


class Receiver:
    """`answer(n)` says what the n-th request (from 0) gets: a status code, or (seconds to wait first,
    status code). Every answer has the headers Content-Type and `location`, and the body `body` (by
    default "answer {status}"); with `drip_seconds`, one more header is sent a byte every 0.3 s for that
    long, each byte well inside any timeout (as a receiver that holds a connection on purpose does)."""

    def __init__(
        self,
        answer: Callable[[int], int | tuple[float, int]],
        *,
        body: bytes | None = None,
        location: str = "http://127.0.0.1:1/elsewhere",
        drip_seconds: float = 0.0,
    ):
        self.answer = answer
        self.body = body
        self.location = location
        self.drip_seconds = drip_seconds
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    index = len(receiver.received)
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                answer = receiver.answer(index)
                wait, status = answer if isinstance(answer, tuple) else (0.0, answer)
                if wait:
                    time.sleep(wait)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Location", receiver.location)
                    if receiver.drip_seconds:
                        self.flush_headers()
                        self.wfile.write(b"X-Drip: ")
                        until = time.monotonic() + receiver.drip_seconds
                        while time.monotonic() < until:
                            self.wfile.write(b".")
                            time.sleep(0.3)
                        self.wfile.write(b"\r\n")
                    self.end_headers()
                    self.wfile.write(f"answer {status}".encode() if receiver.body is None else receiver.body)
                except OSError:
                    pass  # the sender gave up waiting and closed the connection

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # a slow answer still being written never holds up the stop
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def count(self) -> int:
        with self._lock:
            return len(self.received)


@contextmanager
def receiver(
    answer: Callable[[int], int | tuple[float, int]] = lambda _: 200, **options: Any
) -> Iterator[Receiver]:
    """A running Receiver (`options`: its body, location, drip_seconds)."""
    running = Receiver(answer, **options)
    thread = threading.Thread(
        target=running.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()
        thread.join(timeout=5)
