"""Login-flood benchmark: signal-ingest latency while threads send wrong passwords, with the sign-in
throttle on (default limits) and, as the reference, effectively off (huge limits), in one run on one box.

    PYTHONPATH=. .venv/bin/python bench/login_flood.py [--seconds 10] [--flood-threads 16] [--redis-db 12]

It creates a throw-away Postgres database (dropped at the end), builds it with the migrations, makes one
user, account and strategy client, and starts two TradeGuard servers under identical gunicorn settings
(2 workers x 4 threads, as the Procfile), both keeping their counters in Redis database --redis-db
(flushed before each flood and at the end), differing only in TRADEGUARD_LOGIN_LIMIT_PER_EMAIL/_ADDRESS:
the defaults, or 1,000,000 per second. For each server, in rounds that alternate between the two (the
box's speed drifts), it measures signal ingest for --seconds with no flood, then starts the flood
(--flood-threads threads in --flood-processes processes, each sending wrong-password logins for
random unknown emails from 127.0.0.1 over keep-alive connections, as fast as they are answered), waits
until the first 429 and one second more (the throttled server runs argon2 for the address's first
failures, then locks it; without a throttle, --warmup seconds), and measures ingest again for
--seconds while the flood goes on.

Ingest is paced, not flat out: --ingest-rate signed signals per second from --ingest-threads threads,
each a new signal (201), latency timed from send to answer; the point is how long a strategy's signal
waits, not how many the box can take. Printed per phase: ingest p50/p99 and accepted; the flood's
logins per second and answers (401 = argon2 ran, 429 = refused before it); CPU of the web server per
request it answered (ingest and logins together) and in cores busy, and of Postgres and Redis per
ingest request. Postgres and Redis are the machine's shared servers: their CPU includes anything else
running on the box.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    ThrowawayDatabase,
    free_port,
    seed,
    server_env,
    signed_signal,
    start_gunicorn,
    stop,
)
from bench.procfs import by_name, cpu_seconds, descendants  # noqa: E402

HUGE = "1000000 per second"


# --- load ------------------------------------------------------------------------------------------


def _ingest_thread(port, client_id, secret, offset, interval, seconds, tag, results, go):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    go.wait()
    began = time.monotonic()
    n = 0
    # The phase lasts `seconds` of wall time whatever the latency: a thread whose answer comes late
    # sends its next signal at once, and sends fewer (the accepted count shows it).
    while time.monotonic() - began < seconds:
        due = began + offset + n * interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        body, headers = signed_signal(client_id, secret, f"{tag}-{n}")
        sent = time.perf_counter()
        conn.request("POST", "/api/v1/signals", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        results.append((time.perf_counter() - sent, response.status))
        n += 1
    conn.close()


def _ingest_process(port, client_id, secret, rate, threads, seconds, go, queue):
    results: list[tuple[float, int]] = []
    start = threading.Event()
    tag = uuid.uuid4().hex[:8]
    # Threads start staggered across one interval, so that together they send evenly.
    interval = threads / rate
    workers = []
    for t in range(threads):
        worker = threading.Thread(
            target=_ingest_thread,
            args=(
                port,
                client_id,
                secret,
                t * interval / threads,
                interval,
                seconds,
                f"{tag}-{t}",
                results,
                start,
            ),
        )
        workers.append(worker)
        worker.start()
    go.wait()
    start.set()
    for worker in workers:
        worker.join()
    queue.put(results)


def _flood_thread(port, halt, refused, answers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not halt.is_set():
        body = json.dumps({"email": f"flood-{uuid.uuid4().hex}@example.com", "password": "wrong guess"})
        conn.request("POST", "/api/v1/auth/login", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        answers.append((time.monotonic(), response.status))
        if response.status == 429:
            refused.set()
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.close()


def _flood_process(port, threads, halt, refused, queue):
    answers: list[tuple[float, int]] = []
    workers = [
        threading.Thread(target=_flood_thread, args=(port, halt, refused, answers)) for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    queue.put(answers)


@dataclass
class Phase:
    """One measured stretch of ingest against one server, with or without the flood."""

    ingest: list[tuple[float, int]]
    seconds: float
    web_cpu: float
    postgres_cpu: float
    redis_cpu: float
    load_cpu: float
    flood: list[int]  # statuses of the logins answered during the measured stretch
    flood_warmup: list[int]  # ... and during the warm-up before it


def measure_ingest(
    port: int, server_pid: int, client_id: int, secret: str, args: Any, extra_load: list[int]
) -> Any:
    ctx = mp.get_context("fork")
    go, queue = ctx.Event(), ctx.Queue()
    proc = ctx.Process(
        daemon=True,
        target=_ingest_process,
        args=(port, client_id, secret, args.ingest_rate, args.ingest_threads, args.seconds, go, queue),
    )
    proc.start()
    time.sleep(0.5)  # threads connected and waiting
    web, postgres, redis_pids = descendants(server_pid), by_name("postgres"), by_name("redis-server")
    load = [proc.pid or 0, *extra_load]
    before = [cpu_seconds(web), cpu_seconds(postgres), cpu_seconds(redis_pids), cpu_seconds(load)]
    began = time.monotonic()
    go.set()
    results = queue.get()
    ended = time.monotonic()
    after = [cpu_seconds(web), cpu_seconds(by_name("postgres")), cpu_seconds(redis_pids), cpu_seconds(load)]
    proc.join()
    return results, began, ended, [b - a for a, b in zip(before, after, strict=True)]


def run_phase(
    port: int, server_pid: int, client_id: int, secret: str, args: Any, flood: bool, redis_url: str
) -> Phase:
    if not flood:
        results, began, ended, cpu = measure_ingest(port, server_pid, client_id, secret, args, [])
        return Phase(results, ended - began, *cpu, flood=[], flood_warmup=[])
    redis.Redis.from_url(redis_url).flushdb()  # every flood starts on an unlocked address
    ctx = mp.get_context("fork")
    halt, refused, queue = ctx.Event(), ctx.Event(), ctx.Queue()
    per_process = max(1, args.flood_threads // args.flood_processes)
    floods = [
        ctx.Process(daemon=True, target=_flood_process, args=(port, per_process, halt, refused, queue))
        for _ in range(args.flood_processes)
    ]
    flood_began = time.monotonic()
    for proc in floods:
        proc.start()
    # Measure the flood as it goes on, not its first seconds: the throttled server runs argon2 for the
    # address's first failures (the limit), plus those already in flight, then refuses. So wait for
    # the first 429 and a second more for the argon2 calls in flight, or --warmup without a throttle.
    if refused.wait(timeout=args.warmup):
        time.sleep(1.0)
    results, began, ended, cpu = measure_ingest(
        port, server_pid, client_id, secret, args, [p.pid or 0 for p in floods]
    )
    halt.set()
    answers = [a for _ in floods for a in queue.get()]
    for proc in floods:
        proc.join()
    return Phase(
        results,
        ended - began,
        *cpu,
        flood=[status for at, status in answers if began <= at <= ended],
        flood_warmup=[status for at, status in answers if flood_began <= at < began],
    )


def summarize(phases: list[Phase]) -> dict[str, Any]:
    latencies = sorted(latency for phase in phases for latency, _ in phase.ingest)
    statuses = [status for phase in phases for _, status in phase.ingest]
    seconds = sum(phase.seconds for phase in phases)
    flood = collections.Counter(status for phase in phases for status in phase.flood)
    warmup = collections.Counter(status for phase in phases for status in phase.flood_warmup)
    answered = len(statuses) + sum(flood.values())
    web_cpu = sum(phase.web_cpu for phase in phases)
    return {
        "sent": len(statuses),
        "accepted": sum(1 for s in statuses if s == 201),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "flood_per_second": sum(flood.values()) / seconds,
        "flood": dict(sorted(flood.items())),
        "warmup": dict(sorted(warmup.items())),
        "web_cores": web_cpu / seconds,
        "web_cpu_ms": web_cpu / max(1, answered) * 1000,
        "postgres_cpu_ms": sum(phase.postgres_cpu for phase in phases) / max(1, len(statuses)) * 1000,
        "redis_cpu_ms": sum(phase.redis_cpu for phase in phases) / max(1, len(statuses)) * 1000,
        "load_cores": sum(phase.load_cpu for phase in phases) / seconds,
    }


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured ingest per phase")
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="flood before measuring, at most (until the first 429)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ingest-rate", type=float, default=40.0, help="signals per second")
    parser.add_argument("--ingest-threads", type=int, default=4)
    parser.add_argument("--flood-threads", type=int, default=16)
    parser.add_argument("--flood-processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--redis-db", type=int, default=12, help="flushed: use one nobody else does")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()

    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    database = ThrowawayDatabase(args.admin_url)
    # The limits are this benchmark's to set: none inherited from the shell.
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TRADEGUARD_LOGIN_LIMIT", "TRADEGUARD_REGISTER_LIMIT"))
    }
    env = {**server_env(inherited, database.url), "REDIS_URL": redis_url}
    names = ["throttle on (defaults)", "throttle off (huge limits)"]
    envs = {
        names[0]: env,
        names[1]: {
            **env,
            "TRADEGUARD_LOGIN_LIMIT_PER_EMAIL": HUGE,
            "TRADEGUARD_LOGIN_LIMIT_PER_ADDRESS": HUGE,
        },
    }
    servers = {}
    try:
        client_id, secret = seed(env)
        ports = {name: free_port() for name in names}
        for name in names:
            servers[name] = start_gunicorn("web.wsgi:app", ports[name], envs[name], args)
        for name in names:  # warm-up: imports, connections, prepared statements
            measure_ingest(ports[name], servers[name].pid, client_id, secret, args, [])

        phases: dict[tuple[str, bool], list[Phase]] = collections.defaultdict(list)
        for _ in range(args.rounds):
            for name in names:
                for flood in (False, True):
                    phases[name, flood].append(
                        run_phase(ports[name], servers[name].pid, client_id, secret, args, flood, redis_url)
                    )
        figures = {key: summarize(value) for key, value in phases.items()}
    finally:
        for server in servers.values():
            stop(server)
        redis.Redis.from_url(redis_url).flushdb()
        database.drop()

    print(
        f"login flood benchmark: {os.cpu_count()} CPUs, gunicorn {args.workers} x {args.worker_class} "
        f"({args.threads} threads); ingest {args.ingest_rate:.0f} signals/s from {args.ingest_threads} "
        "threads, "
        f"{args.seconds:.0f} s per phase x {args.rounds} rounds; flood {args.flood_threads} threads of "
        f"wrong-password logins, measured after its first 429 + 1 s (or {args.warmup:.0f} s)"
    )
    print(
        f"{'server':<28}{'flood':>6}{'ingest p50':>11}{'p99 ms':>8}{'accepted':>9}{'logins/s':>9}"
        f"{'web cores':>10}{'web ms/req':>11}{'pg ms/sig':>10}{'redis ms/sig':>13}{'load cores':>11}"
        "  flood answers"
    )
    for name in names:
        for flood in (False, True):
            r = figures[name, flood]
            answers = f"{r['flood']} (warm-up {r['warmup']})" if flood else ""
            print(
                f"{name:<28}{'yes' if flood else 'no':>6}{r['p50_ms']:>11.2f}{r['p99_ms']:>8.2f}"
                f"{r['accepted']:>5}/{r['sent']:<4}{r['flood_per_second']:>8.0f}{r['web_cores']:>10.2f}"
                f"{r['web_cpu_ms']:>11.3f}{r['postgres_cpu_ms']:>10.3f}{r['redis_cpu_ms']:>13.3f}"
                f"{r['load_cores']:>11.2f}  {answers}"
            )


if __name__ == "__main__":
    main()
