"""The embedded setup's broker: kombu's filesystem transport, with each message written whole before any
reader can see it.

kombu writes a message straight under its final name and then writes its bytes; a consumer polling the
folder may move and read the file in between, find it empty, and die on the JSON error ("Unrecoverable
error: JSONDecodeError", the worker process exits). Beat's sub-second guard watch made this common. Here
a message is written under a name no queue reads (a dot first) and renamed into place, which is atomic
on one file system, and a reader that still meets a file being written (one from kombu's own transport,
an older process) reads it again until it is whole instead of dying.

Every process that publishes on the embedded setup uses it: celeryconfig sets it as the filesystem
broker's transport (the web's task queue, beat), and the workers' transport (workers.broker) extends it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

TRANSPORT = "shared.core.broker:FilesystemTransport"

# How long a reader waits for a message file another process is still writing.
PARTIAL_READ_SECONDS = 2.0


class FilesystemChannel(filesystem.Channel):
    # kombu's two base classes name the message differently (payload, message): the filesystem one's here.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: `_get` takes only names whose part after the first dot is "<queue>.msg".
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb", buffering=0) as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            folder = self.processed_folder if self.store_processed else tempfile.gettempdir()
            try:
                shutil.move(os.path.join(self.data_folder_in, name), folder)
            except OSError:
                continue  # taken by another consumer meanwhile
            path = os.path.join(folder, name)
            payload = _read_whole(path)
            if not self.store_processed:
                os.remove(path)
            return loads(bytes_to_str(payload))
        raise Empty()


def _read_whole(path: str) -> bytes:
    """The file's bytes once they parse as JSON: a writer that opened it under its final name may still
    be writing (the rename that moved it keeps its open file)."""
    deadline = time.monotonic() + PARTIAL_READ_SECONDS
    while True:
        try:
            with open(path, "rb") as file:
                payload = file.read()
        except OSError as exc:
            raise ChannelError(f"Cannot read file {path!r} from queue.") from exc
        try:
            loads(bytes_to_str(payload))
            return payload
        except ValueError:
            if time.monotonic() >= deadline:
                log.error("broker message %s is not whole after %.0f s; dropped", path, PARTIAL_READ_SECONDS)
                raise
            time.sleep(0.01)


class FilesystemTransport(filesystem.Transport):
    Channel = FilesystemChannel
