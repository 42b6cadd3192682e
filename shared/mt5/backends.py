"""How a call reaches a terminal: the module in this process (the MetaTrader5 package, the simulator), or a
remote Python over RPyC classic with a bounded channel that serves nothing of ours.
"""

from __future__ import annotations

import importlib
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from rpyc.core import consts as rpyc_consts
from rpyc.core.channel import Channel
from rpyc.core.protocol import Connection as RpycConnection
from rpyc.core.service import VoidService
from rpyc.core.stream import SocketStream
from rpyc.utils.factory import connect_channel

from shared.mt5.errors import TerminalNotSupported
from shared.mt5.terminals import canonical_terminal_url
from shared.mt5.wire import (
    _REMOTE_HELPER,
    Call,
    SessionKey,
    _session_call,
    _stops_run,
    decode_answers,
    encode_calls,
    to_plain,
)


class Backend(Protocol):
    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """(plain result, last_error() when the result is None or False, else None)."""

    def call_many(self, calls: list[Call]) -> list[tuple[Any, Any]]:
        """The answers of `calls` made in order, up to and including the first that failed."""

    def close(self) -> None: ...


class LocalBackend:
    """A module-like object in this process: the MetaTrader5 package, or a SimTerminal."""

    def __init__(self, module: Any):
        self.module = module

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        result, error = _session_call(self.module, name, args, kwargs)
        return to_plain(result), error

    def call_many(self, calls: list[Call]) -> list[tuple[Any, Any]]:
        answers = []
        with _module_lock(self.module):  # as _tradeguard_calls does remotely
            for name, args, kwargs in calls:
                answers.append(self.call(name, args, kwargs))
                if _stops_run(name, answers[-1][1]):
                    break
        return answers

    def close(self) -> None:
        pass


_module_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_module_locks_guard = threading.Lock()


def _module_lock(module: Any) -> threading.Lock:
    """One lock per module-like object: the MetaTrader5 package (one session per process) gets one lock
    for the process; each in-process SimTerminal, whose session is its own, gets its own."""
    with _module_locks_guard:
        lock = _module_locks.get(module)
        if lock is None:
            lock = _module_locks[module] = threading.Lock()
        return lock


class RemoteError(Exception):
    """An exception raised in the terminal's Python, reduced to text.

    RPyC would rebuild a remote exception as an instance of whatever class the remote names, with the
    remote's attributes set on it; here it is only ever this class, holding the remote type's name and
    message as strings."""

    def __init__(self, remote_type: str, message: str):
        super().__init__(f"{remote_type}: {message}" if message else remote_type)
        self.remote_type = remote_type

    @classmethod
    def from_rpyc(cls, raw: Any) -> RemoteError:
        try:
            (module, name), args, _attributes, _traceback = raw
            remote_type = f"{module}.{name}" if type(module) is str and type(name) is str else "?"
            message = " ".join(str(a) for a in args if type(a) in (str, int, float))
        except (TypeError, ValueError):
            return cls("?", "an exception the terminal could not describe")
        return cls(remote_type[:200], message[:500])


_IMPORT_ERRORS = frozenset({"builtins.ImportError", "builtins.ModuleNotFoundError"})


class _ServesNothing(RpycConnection):
    """Our end of an RPyC connection to a terminal.

    The terminal's side evaluates our fixed calls (it is an RPyC classic server, as mt5linux's is); our
    side answers none of its requests but ping and close. RPyC is symmetric: with the classic service on
    our side too (what `rpyc.classic.connect` does), the terminal could import modules, read attributes
    and call functions in the worker during any of our calls. Here every other request is refused before
    its arguments are even decoded, and exceptions the terminal sends are reduced to text
    (`RemoteError`) instead of being rebuilt as the classes it names."""

    _ALLOWED_REQUESTS = frozenset({rpyc_consts.HANDLE_PING, rpyc_consts.HANDLE_CLOSE})

    def _dispatch_request(self, seq: int, raw_args: Any) -> None:
        handler = raw_args[0] if type(raw_args) is tuple and raw_args else None
        if handler not in self._ALLOWED_REQUESTS:
            refusal = PermissionError("this TradeGuard worker serves no requests over a terminal connection")
            self._send(rpyc_consts.MSG_EXCEPTION, seq, self._box_exc(PermissionError, refusal, None))
            return
        super()._dispatch_request(seq, raw_args)

    def _unbox_exc(self, raw: Any) -> RemoteError:
        return RemoteError.from_rpyc(raw)


class _NoService(VoidService):
    """Exposes nothing (and `_ServesNothing` would refuse to look anyway)."""

    _protocol = _ServesNothing


# The most one message from a terminal may be, compressed or not: a year of an account's deals is a few
# MB. Anything longer is refused before it is read, so a terminal cannot make a worker allocate
# gigabytes (RPyC's own framing takes up to 4 GiB, and decompresses without a limit).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _BoundedChannel(Channel):
    """RPyC's framing, with what one message may cost bounded: its length (MAX_MESSAGE_BYTES, also once
    decompressed) and the time to receive it once it has begun (`read_seconds`). RPyC's socket read
    retries a timed-out recv for ever, so a terminal that sent a frame header and then stopped, or
    trickled a byte now and then, would hold the reading thread (a sync thread, an order task) for good.
    Either way the connection is closed (EOFError: the terminal is unavailable)."""

    __slots__ = ["read_seconds"]

    def __init__(self, stream: SocketStream, read_seconds: float):
        # Nothing we send is big enough to be worth compressing.
        super().__init__(stream, compress=False)
        self.read_seconds = read_seconds

    def recv(self) -> bytes:
        deadline = time.monotonic() + self.read_seconds
        length, compressed = self.FRAME_HEADER.unpack(self._read(self.FRAME_HEADER.size, deadline))
        if length > MAX_MESSAGE_BYTES:
            self.stream.close()
            raise EOFError(f"the terminal announced {length} bytes, more than a message may be")
        data = self._read(length + len(self.FLUSHER), deadline)[: -len(self.FLUSHER)]
        if compressed:
            inflate = zlib.decompressobj()
            data = inflate.decompress(data, MAX_MESSAGE_BYTES)
            if inflate.unconsumed_tail:
                self.stream.close()
                raise EOFError(f"the terminal's message expands past {MAX_MESSAGE_BYTES} bytes")
        return data

    def _read(self, count: int, deadline: float) -> bytes:
        stream = self.stream
        chunks = []
        while count > 0:
            left = deadline - time.monotonic()
            if left <= 0 or not stream.poll(left):
                stream.close()
                raise EOFError(f"the terminal did not finish its message within {self.read_seconds:g} s")
            try:
                chunk = stream.sock.recv(min(stream.MAX_IO_CHUNK, count))
            except OSError as exc:
                stream.close()
                raise EOFError(exc) from exc
            if not chunk:
                stream.close()
                raise EOFError("connection closed by the terminal")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)


# Our side's settings: nothing of ours is reachable, pickled or rebuilt from the remote's names; and a
# close the terminal answers with an error still closes (it must never raise out of Gateway.close).
_CLIENT_CONFIG = {
    "close_catchall": True,
    "allow_safe_attrs": False,
    "allow_exposed_attrs": False,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_getattr": False,
    "allow_setattr": False,
    "allow_delattr": False,
    "allow_pickle": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "instantiate_oldstyle_exceptions": False,
    "include_local_traceback": False,
    "include_local_version": False,
}


class RpycBackend:
    """The module in another Python, reached over RPyC: an RPyC classic server runs our fixed calls
    there (exactly as mt5linux reaches the package under Wine), and nothing can run here."""

    def __init__(self, host: str, port: int, timeout: float):
        self.key = (host, port)
        # What the terminal session behind this connection is logged in to, for a pooled connection's
        # next user: it logs in again only when it needs another account.
        self.initialized = False
        self.logged_in_as: SessionKey | None = None
        # sync_request_timeout bounds every request's wait for an answer to begin, on this connection,
        # not just ours: an RPyC request that never gets an answer then frees the worker thread too. The
        # channel bounds the rest (see _BoundedChannel).
        stream = SocketStream.connect(host, port, ipv6=":" in host, timeout=timeout)
        self.conn = connect_channel(
            _BoundedChannel(stream, read_seconds=timeout),
            service=_NoService,
            config={**_CLIENT_CONFIG, "sync_request_timeout": timeout},
        )
        try:
            slave = self.conn.root
            try:
                slave.execute("import MetaTrader5 as mt5")
            except RemoteError as exc:
                if exc.remote_type not in _IMPORT_ERRORS:
                    raise
                raise TerminalNotSupported(
                    f"the Python at {host}:{port} has no MetaTrader5 package: install it there "
                    "(the mt5linux server must run the Windows Python that has it)",
                    call="import MetaTrader5",
                ) from exc
            slave.execute(_REMOTE_HELPER)
            self._helper = slave.eval("_tradeguard_calls")
        except BaseException:
            self.conn.close()
            raise

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        return self.call_many([(name, args, kwargs)])[0]

    def call_many(self, calls: list[Call]) -> list[tuple[Any, Any]]:
        return decode_answers(self._helper(encode_calls(calls)), len(calls))

    def close(self) -> None:
        self.conn.close()


def connector(
    terminal_url: str, timeout: float
) -> tuple[tuple[str, int] | None, Callable[[], Backend], bool]:
    """What connecting to `terminal_url` means, as a function to run under the connect timeout; the
    (host, port) that a pool keys the connection by (None: an in-process terminal, nothing to pool); and
    whether the terminal's session is shared by all its connections (the real package: one per
    process) rather than one per connection (TradeGuard's simulated terminal)."""
    parts = urlsplit(canonical_terminal_url(terminal_url))
    scheme, host, port = parts.scheme, parts.hostname, parts.port

    if scheme == "mt5":
        try:
            module = importlib.import_module("MetaTrader5")
        except ImportError as exc:
            raise TerminalNotSupported(
                "mt5:// needs the MetaTrader5 package, which is Windows-only and not installed here; "
                "use an mt5linux://host:port bridge instead",
                call="import MetaTrader5",
            ) from exc
        return None, lambda: LocalBackend(module), True

    if scheme == "sim" and not host:

        def in_process() -> Backend:
            from shared.mt5.sim.broker import default_broker
            from shared.mt5.sim.terminal import SimTerminal

            return LocalBackend(SimTerminal(default_broker()))

        return None, in_process, False

    # mt5linux://host:port or sim://host:port (the canonical form always has both).
    assert host is not None and port is not None
    return (host, port), lambda: RpycBackend(host, port, timeout), scheme == "mt5linux"
