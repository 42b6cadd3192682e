"""`./bin/demo` end to end, as a newcomer runs it: it starts the whole system on the embedded defaults
(its own instance folder and ports here), plays the owner's day and prints the summary; `--exit` stops
everything it started once it is done."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.processes import ROOT, embedded_env, free_port, listening


def test_the_demo_runs_the_whole_story_and_stops_what_it_started(tmp_path: Path):
    ports = {"PORT": free_port(), "TRADEGUARD_TERMINAL_PORT": free_port(), "FLOWER_PORT": free_port()}
    env = embedded_env(tmp_path, {name: str(port) for name, port in ports.items()})
    env["TRADEGUARD_TERMINALS"] = f"sim://127.0.0.1:{ports['TRADEGUARD_TERMINAL_PORT']}"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    done = subprocess.run(
        [str(ROOT / "bin" / "demo"), "--exit"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=420
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        output[-4000:] + (tmp_path / "demo-system.log").read_text(errors="replace")[-4000:]
    )
    # One progress line per step, in order.
    steps = [
        "starting the system",
        "the system is up",
        "risk settings",
        "3 signed signals sent",
        "signal 1 approved",
        "signal 2 approved",
        "signal 3 rejected",
        "moved by hand to 1.08 (retcode 10009)",
        "bought by hand on the terminal",
        "reconciliation:",
        "the guard warns",
        "pending, the positions close at",
        "executed: 3 position(s) closed",
        "stopping what the demo started",
    ]
    positions = [output.find(text) for text in steps]
    assert -1 not in positions, [text for text, at in zip(steps, positions, strict=True) if at == -1]
    assert positions == sorted(positions)
    # The summary: both trades closed by the guard, what reconciliation found, the alert and its closes.
    assert "  trades: 2" in output
    assert len(re.findall(r"closed by guard at 1\.0838, P&L -\d+", output)) == 2
    assert "'outside_position': 1" in output and "'divergence': 1" in output and "'matched': 2" in output
    assert re.search(r"alert #\d+ \(drawdown, max drawdown: .*\): executed, 3 position\(s\) closed", output)
    assert output.count(": closed at 1.0838, P&L") == 3
    assert f"http://127.0.0.1:{ports['PORT']}/   (sign in as demo-" in output
    # Everything it started is stopped.
    assert not any(listening(port) for port in ports.values())
