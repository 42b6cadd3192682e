"""The embedded broker writes each message whole before a consumer can see it, and a consumer that meets
a message still being written (kombu's own writer) waits for it instead of dying."""

from __future__ import annotations

import json
import os
import threading
import time

from kombu import Connection

from shared.core import broker


def connection(folder):
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "polling_interval": 0.01}
    return Connection("filesystem://", transport=broker.FilesystemTransport, transport_options=options)


def test_a_message_is_never_visible_under_its_queue_name_before_it_is_whole(tmp_path, monkeypatch):
    seen_while_writing = []
    real_dumps = broker.dumps

    def dumps(payload):
        # Called with the message's file open for writing: what a consumer could take at that moment.
        seen_while_writing.extend(n for n in os.listdir(tmp_path) if n.partition(".")[2] == "q.msg")
        return real_dumps(payload)

    with connection(tmp_path) as conn:
        queue = conn.SimpleQueue("q")
        monkeypatch.setattr(broker, "dumps", dumps)
        queue.put({"n": 1})
        monkeypatch.setattr(broker, "dumps", real_dumps)
        assert queue.get(timeout=1).payload == {"n": 1}
        queue.close()
    assert seen_while_writing == []
    assert [n for n in os.listdir(tmp_path) if n.endswith(".part")] == []


def test_a_message_still_being_written_is_read_once_whole(tmp_path):
    """As kombu's own writer does it: the final name first, the bytes after."""
    with connection(tmp_path) as conn:
        queue = conn.SimpleQueue("q")
        queue.put({"warm": True})  # declares the queue's bindings
        queue.get(timeout=1).ack()
        body = json.dumps(
            {
                "body": "x" * 10000,
                "headers": {},
                "properties": {},
                "content-type": "application/json",
                "content-encoding": "utf-8",
            }
        )
        path = tmp_path / f"{int(time.monotonic() * 1000)}_late.q.msg"
        writer = open(path, "wb", buffering=0)  # noqa: SIM115 - held open across the reader's first look

        def finish():
            time.sleep(0.2)
            writer.write(body.encode())
            writer.close()

        thread = threading.Thread(target=finish)
        thread.start()
        payload = broker._read_whole(str(path))
        thread.join()
        assert json.loads(payload)["body"] == "x" * 10000
        queue.close()
