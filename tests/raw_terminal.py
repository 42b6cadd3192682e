"""A misbehaving "terminal" that speaks RPyC's wire protocol itself, for the transport tests.

It answers the connecting gateway's setup as an RPyC classic server would (the remote root, `execute`,
`eval` of the helper) and answers the first `honest` runs of calls with `[[true, null], ...]`; after that
it misbehaves as `mode` says:

- `stall`: sends a frame header and one byte of the promised message, then nothing;
- `close_stall`: answers honestly, but stalls the same way in its answer to the connection's close;
- `huge`: announces a message longer than a gateway takes;
- `bomb`: sends a small compressed message that expands past what a gateway takes;
- `local_ref`: answers with a reference to an object on the gateway's side (there is none);
- `nan`: answers an order with NaN and Infinity for its volume and price;
- `short`: answers a run of calls with no answer at all (`[]`).

It runs on a thread of the test process: nothing in it is TradeGuard's.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import zlib
from typing import Any

from rpyc.core import brine, consts

_HEADER = struct.Struct("!LB")


class RawTerminal:
    def __init__(self, mode: str, honest: int = 1, bomb_bytes: int = 0):
        self.mode = mode
        self.honest = honest
        self.bomb_bytes = bomb_bytes
        self.runs = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._ids = iter(range(1000, 10**9))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mt5linux://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    # --- the wire ---------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _send(conn: socket.socket, data: bytes, compressed: bool = False) -> None:
        if compressed:
            data = zlib.compress(data, 9)
        conn.sendall(_HEADER.pack(len(data), int(compressed)) + data + b"\n")

    @staticmethod
    def _receive(conn: socket.socket, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = conn.recv(count - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _reply(self, conn: socket.socket, seq: int, boxed: Any, compressed: bool = False) -> None:
        self._send(conn, brine.I1.pack(consts.MSG_REPLY) + brine.dump((seq, boxed)), compressed)

    def _stall(self, conn: socket.socket) -> None:
        conn.sendall(_HEADER.pack(100, 0) + b"x")  # a message of 100 bytes is coming... one byte of it
        time.sleep(3600)

    def _remote_ref(self) -> Any:
        return (consts.LABEL_REMOTE_REF, ("builtins.function", 1, next(self._ids)))

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                length, _ = _HEADER.unpack(self._receive(conn, _HEADER.size))
                data = self._receive(conn, length + 1)[:-1]
                if data[0] != consts.MSG_REQUEST:
                    continue
                seq, (handler, boxed) = brine.load(data[1:])
                self._answer(conn, seq, handler, str(boxed))
        except (EOFError, OSError):
            conn.close()

    def _answer(self, conn: socket.socket, seq: int, handler: int, text: str) -> None:
        if handler == consts.HANDLE_DEL:
            return
        if handler == consts.HANDLE_GETROOT:
            self._reply(conn, seq, (consts.LABEL_REMOTE_REF, ("rpyc.core.service.SlaveService", 7, 8)))
        elif handler == consts.HANDLE_INSPECT:
            self._reply(conn, seq, (consts.LABEL_VALUE, ()))
        elif handler == consts.HANDLE_GETATTR:
            self._reply(conn, seq, self._remote_ref())
        elif handler == consts.HANDLE_CLOSE:
            if self.mode == "close_stall":
                self._stall(conn)
            self._reply(conn, seq, (consts.LABEL_VALUE, None))
        elif handler == consts.HANDLE_CALL:
            if "def _tradeguard" in text or "import MetaTrader5" in text:
                self._reply(conn, seq, (consts.LABEL_VALUE, None))  # execute
            elif "'_tradeguard_calls'" in text:
                self._reply(conn, seq, self._remote_ref())  # eval: the helper
            else:
                self._run(conn, seq, text)

    def _run(self, conn: socket.socket, seq: int, text: str) -> None:
        self.runs += 1
        calls = json.loads(text[text.index("'[[") + 1 : text.rindex("]]'") + 2])
        if self.runs <= self.honest or self.mode == "close_stall":
            self._reply(conn, seq, (consts.LABEL_VALUE, json.dumps([[True, None]] * len(calls))))
        elif self.mode == "stall":
            self._stall(conn)
        elif self.mode == "huge":
            conn.sendall(_HEADER.pack(2**32 - 1, 0) + b"x")
        elif self.mode == "bomb":
            # Compressed a megabyte at a time: the bomb is small here, and only its receiver would have
            # to hold all of it.
            deflate = zlib.compressobj(9)
            megabyte = b"\0" * (1 << 20)
            bomb = (
                b"".join(deflate.compress(megabyte) for _ in range(self.bomb_bytes >> 20)) + deflate.flush()
            )
            conn.sendall(_HEADER.pack(len(bomb), 1) + bomb + b"\n")
        elif self.mode == "local_ref":
            self._reply(conn, seq, (consts.LABEL_LOCAL_REF, ("x", 1, 2)))
        elif self.mode == "nan":
            fill = {"retcode": 10009, "deal": 1, "order": 2, "volume": "NaN", "price": "Infinity"}
            fill |= {"bid": 1, "ask": 1, "comment": "", "request_id": 1}
            answers = [[True, None]] * (len(calls) - 1) + [[fill, None]]  # the login first, if any
            reply = json.dumps(answers).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
            self._reply(conn, seq, (consts.LABEL_VALUE, reply))
        elif self.mode == "short":
            self._reply(conn, seq, (consts.LABEL_VALUE, "[]"))
