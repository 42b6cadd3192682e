"""The simulated trade server's state file: what a restarted `terminal` process takes over.

TradeGuard's database outlives a restart of `./bin/run`; a trade server that forgot its positions and
history at every restart would disagree with it (trades "filled" on positions that no longer exist).
So the `terminal` process keeps its broker's state (`SimBroker.state()`: accounts, positions, history,
counters, prices) in a JSON file, written atomically:

- by a `StateKeeper` thread, every `interval_seconds` when something the file keeps has changed (a crash
  loses at most that much; tickets still never repeat, as each broker starts its tickets at the clock's
  microseconds), and once more when the process stops;
- read back at start-up (`load_state`); an unreadable file is set aside (renamed) and the broker starts
  afresh, rather than the terminal refusing to start.

On by default in the embedded setup (`instance/sim-state.json`, see `default_state_file`), where the
whole system lives in `instance/`; with a server database it is off unless TRADEGUARD_SIM_STATE_FILE
names a file (the tests start many terminal processes side by side, each with a market of its own).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from shared.core.config import PROJECT_ROOT
from shared.mt5.sim.broker import SimBroker

__all__ = [
    "STATE_FILE_ENV",
    "StateKeeper",
    "default_state_file",
    "keep_state",
    "load_state",
    "save_state",
]

log = logging.getLogger(__name__)

STATE_FILE_ENV = "TRADEGUARD_SIM_STATE_FILE"
STATE_FILE_NAME = "sim-state.json"
STATE_FILE_OFF = "off"
FORMAT = 1  # of the file; another is unreadable (set aside)
DEFAULT_INTERVAL_SECONDS = 2.0


def default_state_file(env: Mapping[str, str] | None = None) -> Path | None:
    """Where the `terminal` process keeps its state: the file TRADEGUARD_SIM_STATE_FILE names (`off`:
    nowhere); unset or empty (as every setting, so a copied .env.example changes nothing),
    `sim-state.json` in the instance directory on the embedded setup (no DATABASE_URL, or a SQLite one),
    and nowhere next to a server database."""
    env = os.environ if env is None else env
    named = (env.get(STATE_FILE_ENV) or "").strip()
    if named:
        return None if named.lower() == STATE_FILE_OFF else Path(named)
    database_url = env.get("DATABASE_URL") or ""
    if database_url and not database_url.startswith("sqlite"):
        return None
    # As shared.core.config.load_settings finds the instance directory (without its other work).
    instance_dir = Path(env.get("TRADEGUARD_INSTANCE_DIR") or PROJECT_ROOT / "instance")
    return instance_dir.resolve() / STATE_FILE_NAME


def save_state(broker: SimBroker, path: Path) -> None:
    """Write the broker's state to `path` atomically (a reader sees the old file or the new one)."""
    payload = {"format": FORMAT, "saved_at": time.time(), **broker.state()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with partial.open("w") as out:
        json.dump(payload, out, separators=(",", ":"))
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def load_state(broker: SimBroker, path: Path) -> bool:
    """Restore the broker from `path`; whether it did. A missing file is a first start; an unreadable one
    is renamed `<name>.unreadable-<unix time>` (kept for a look, never read again) and logged."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    try:
        state = json.loads(text)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"not a simulator state file of format {FORMAT}")
        broker.restore(state)
    except ValueError as exc:  # JSONDecodeError included
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        os.replace(path, aside)
        log.error("simulator state %s unreadable (%s): set aside as %s; starting afresh", path, exc, aside)
        return False
    log.info("simulator state restored from %s", path)
    return True


class StateKeeper:
    """Saves a broker's state to a file whenever it changed, at most every `interval_seconds`, and once
    more on `close()`. One daemon thread; saving never holds the broker's lock while writing."""

    def __init__(self, broker: SimBroker, path: Path, *, interval_seconds: float = DEFAULT_INTERVAL_SECONDS):
        self.broker = broker
        self.path = path
        self.interval_seconds = interval_seconds
        self._saved_changes: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-state-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def save_if_changed(self) -> None:
        changes = self.broker.changes
        if changes == self._saved_changes:
            return
        save_state(self.broker, self.path)
        self._saved_changes = changes

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.save_if_changed()
            except OSError:
                log.exception("saving the simulator state to %s failed; trying again", self.path)

    def close(self) -> None:
        """Stop the thread and save the last state (its prices included, which move without counting as
        a change)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        save_state(self.broker, self.path)


def keep_state(broker: SimBroker, path: Path | None) -> StateKeeper | None:
    """Restore `broker` from `path` and start keeping its state there; None (nothing kept) without a
    path."""
    if path is None:
        return None
    load_state(broker, path)
    keeper = StateKeeper(broker, path)
    keeper.start()
    return keeper
