"""The embedded setup's broker transport in the workers: the filesystem transport of shared.core.broker
(messages written whole), which also stops waiting for messages as soon as its worker is asked to stop.

On a transport without an event loop (the filesystem one) a worker waits for messages in
`drain_events(timeout=2.0)`, polling its folders, and looks at its stop flag only between two such waits;
once it has seen the flag it drains one more time before it stops (`celery.worker.loops.synloop`). So a
SIGTERM sat up to 4 s in those waits before the warm shutdown even began, and with the pool's own
wind-down the worker outlived honcho's 5-s grace and was SIGKILLed. Once the worker's stop flag is set,
these channels answer "nothing came" (TimeoutError, alias socket.timeout, which an idle wait ends with)
without reading the folders; in any other process the flag is never set and this is kombu's transport.
"""

from __future__ import annotations

from typing import Any

from celery.worker import state

from shared.core import broker

# Set as the broker transport by workers/celery_app.py (worker, beat and Flower load it; the web's task
# queue only publishes, with shared.core.broker's, which celeryconfig names).
TRANSPORT = "workers.broker:FilesystemTransport"


def worker_is_stopping() -> bool:
    """Whether this process is a worker that has been asked to stop: celery sets the flags to the exit
    code (0 included) in its SIGTERM/SIGINT/SIGQUIT handlers; they are None or False otherwise."""
    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


class FilesystemChannel(broker.FilesystemChannel):
    def drain_events(self, timeout: float | None = None, callback: Any = None) -> Any:
        if worker_is_stopping():
            raise TimeoutError("the worker is stopping")
        return super().drain_events(timeout=timeout, callback=callback)


class FilesystemTransport(broker.FilesystemTransport):
    Channel = FilesystemChannel
