"""Each Procfile process says first which process it is and which database and broker it uses, as the
README promises: a process started on the embedded defaults by mistake (a missing DATABASE_URL) must say
so at once. Before, only the workers said it, labelled "web", and beat, Flower and the terminal never."""

from __future__ import annotations

import re

from shared.core.config import describe, load_settings
from tests.processes import declared_terminal_port, embedded_env, free_port, procfile_processes

# What each process prints once it is up (the line comes before it).
READY = {
    "web": "Listening at",
    "worker": "ready.",
    "reconciler": "ready.",
    "guards": "ready.",
    "beat": "beat: Starting",
    "flower": "Visit me at",
    "terminal": "ready on",
}
# gunicorn's master logs its version first, and beat prints its banner before it sets up logging: there
# the line is the first after those.
FIRST_LINE_AFTER = {"web": "Starting gunicorn", "beat": "maxinterval"}


def test_every_procfile_process_starts_by_naming_itself_its_database_and_its_broker(embedded_instance):
    env = embedded_env(
        embedded_instance,
        {
            "PORT": str(free_port()),
            "WEB_CONCURRENCY": "1",
            "FLOWER_PORT": str(free_port()),
            "TRADEGUARD_TERMINAL_PORT": str(declared_terminal_port()),
            "WORKER_CONCURRENCY": "1",
            "RECONCILE_CONCURRENCY": "1",
            "GUARDS_CONCURRENCY": "1",
        },
    )
    uses = describe(load_settings(env))
    assert "embedded SQLite" in uses and str(embedded_instance) in uses
    expected = {
        "web": "TradeGuard web: ",
        "worker": re.compile(r"TradeGuard worker orders@\S+ \(queues: celery\): "),
        "reconciler": re.compile(r"TradeGuard worker reconcile@\S+ \(queues: reconcile\): "),
        "guards": re.compile(r"TradeGuard worker guards@\S+ \(queues: guards\): "),
        "beat": "TradeGuard beat: ",
        "flower": "TradeGuard flower: ",
        "terminal": "TradeGuard terminal: ",
    }
    with procfile_processes(list(READY), env) as processes:
        for name, process in processes.items():
            process.wait_for_log(READY[name])
        wrong: dict[str, object] = {}
        for name, process in processes.items():
            lines = [line for line in process.log().splitlines() if line.strip()]
            if name in FIRST_LINE_AFTER:
                lines = lines[next(i for i, line in enumerate(lines) if FIRST_LINE_AFTER[name] in line) + 1 :]
            label = expected[name]
            first = lines[0]
            if not (label.search(first) if isinstance(label, re.Pattern) else label in first):
                wrong[name] = ("first line", lines[:3])
            elif not first.endswith(uses):
                wrong[name] = ("database and broker", first)
            # Once per process.
            elif sum("TradeGuard " in line and uses in line for line in lines) != 1:
                wrong[name] = ("more than once", lines)
            elif name != "web" and "TradeGuard web" in process.log():
                wrong[name] = ("calls itself the web", lines)
        assert wrong == {}
