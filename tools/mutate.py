"""Mutation testing of the money path (`make mutation`; README: "Mutation testing").

Makes one small change at a time to a module (a mutant) and runs the tests that guard it: a mutant the
tests do not notice (they all pass) survives, and each survivor is either a missing test or a change that
makes no difference. The changes are the ones a slip of the finger makes:

- a comparison flipped or moved across its boundary: == and !=, < and <=, > and >=, in and not in,
  is and is not;
- `and` and `or` swapped, a `not` dropped;
- + and -, * and / swapped;
- True and False swapped, the constants 0 and 1 swapped.

Modules and the tests each one's mutants are run against are set in pyproject.toml
([tool.mutate.modules]). Every mutant is applied in a copy of the tree under a temporary folder (one copy
per parallel job, each with its own Redis database): the files in the working tree are never touched. The
tests run in a fresh pytest process per mutant (`-x -q -p no:randomly`, in the copy, the copy first on
PYTHONPATH); the selections keep to the tests that call the code as plain functions, which keeps a run
short.

    python tools/mutate.py                          # every module in the configuration
    python tools/mutate.py shared/execution/rules.py  # some modules
    python tools/mutate.py --list shared/execution/rules.py   # the mutants, without running them
    python tools/mutate.py --line 97 shared/execution/rules.py  # only the mutants on some lines

Prints each survivor (file:line, the change, the line) and the score per module, and writes them to
.mutation/results.json (whole-module runs). Exit status 0 unless the unmutated tests fail or a mutant's
run collected no test.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parent.parent
# What a copy of the tree holds: enough to import the app and run the tests.
COPIED = ["shared", "web", "workers", "tests", "migrations", "celeryconfig.py", "pyproject.toml"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
RESULTS = ROOT / ".mutation" / "results.json"

_COMPARE_SWAPS: dict[type[ast.cmpop], tuple[type[ast.cmpop], str, str]] = {
    # operator: (its mutant, its text as a pattern, the mutant's text)
    ast.Eq: (ast.NotEq, r"==", "!="),
    ast.NotEq: (ast.Eq, r"!=", "=="),
    ast.Lt: (ast.LtE, r"(?<![<>=!])<(?![<=])", "<="),
    ast.LtE: (ast.Lt, r"<=", "<"),
    ast.Gt: (ast.GtE, r"(?<![<>=!-])>(?![>=])", ">="),
    ast.GtE: (ast.Gt, r">=", ">"),
    ast.In: (ast.NotIn, r"(?<![\w.])in(?!\w)", "not in"),
    ast.NotIn: (ast.In, r"(?<![\w.])not\s+in(?!\w)", "in"),
    ast.Is: (ast.IsNot, r"(?<![\w.])is(?!\w)", "is not"),
    ast.IsNot: (ast.Is, r"(?<![\w.])is\s+not(?!\w)", "is"),
}
_BINARY_SWAPS: dict[type[ast.operator], tuple[str, str]] = {
    ast.Add: (r"(?<![+=])\+(?!=)", "-"),
    ast.Sub: (r"(?<![-=])-(?![=>])", "+"),
    ast.Mult: (r"(?<![*])\*(?![*=])", "/"),
    ast.Div: (r"(?<![/])/(?![/=])", "*"),
}
_CONSTANT_SWAPS: dict[object, str] = {"True": "False", "False": "True", "0": "1", "1": "0"}


@dataclass(frozen=True)
class Mutant:
    module: str  # path, relative to the root
    index: int  # in the module, in source order
    line: int
    change: str  # "< -> <=", say
    start: int  # byte offsets of the replaced text in the module's source
    end: int
    replacement: str
    source_line: str

    @property
    def name(self) -> str:
        return f"{self.module}:{self.line} {self.change}"


# --- finding the mutants -------------------------------------------------------------------------------


def _offsets(source: bytes) -> list[int]:
    """The byte offset at which each line starts (ast columns are byte offsets)."""
    starts = [0]
    for match in re.finditer(rb"\n", source):
        starts.append(match.end())
    return starts


class _Finder(ast.NodeVisitor):
    """The mutation points of a module, skipping what does not run as behaviour: annotations,
    decorators, f-strings (message text), docstrings, the arguments of logging calls and zip's
    `strict`."""

    def __init__(self, source: bytes):
        self.source = source
        self.starts = _offsets(source)
        self.points: list[tuple[int, int, int, str, str]] = []  # line, start, end, replacement, change

    def _at(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    def _gap(self, left: ast.AST, right: ast.AST) -> tuple[int, int]:
        return (
            self._at(left.end_lineno, left.end_col_offset),  # type: ignore[attr-defined]
            self._at(right.lineno, right.col_offset),  # type: ignore[attr-defined]
        )

    def _replace_in(self, line: int, span: tuple[int, int], pattern: str, new: str, change: str) -> None:
        text = self.source[span[0] : span[1]].decode()
        found = list(re.finditer(pattern, text))
        if len(found) != 1:  # not where it should be (a comment in between, say): leave it alone
            return
        match = found[0]
        start = span[0] + len(text[: match.start()].encode())
        end = span[0] + len(text[: match.end()].encode())
        self.points.append((line, start, end, new, change))

    # Skipped subtrees.
    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return

    def visit_arg(self, node: ast.arg) -> None:
        return  # its annotation

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.visit(node.args)  # its defaults (the decorators are skipped, as a class's are)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        for statement in body:
            self.visit(statement)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for statement in node.body:
            self.visit(statement)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg != "strict":  # zip(..., strict=True) only asserts equal lengths
            self.visit(node.value)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "log":
            return
        self.generic_visit(node)

    # Mutation points.
    def visit_Compare(self, node: ast.Compare) -> None:
        left: ast.AST = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap is not None:
                _, pattern, new = swap
                old = _plain(type(op))
                self._replace_in(node.lineno, self._gap(left, right), pattern, new, f"{old} -> {new}")
            left = right
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        for left, right in zip(node.values, node.values[1:], strict=False):
            self._replace_in(
                right.lineno, self._gap(left, right), rf"(?<!\w){old}(?!\w)", new, f"{old} -> {new}"
            )
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = _BINARY_SWAPS.get(type(node.op))
        if swap is not None:
            pattern, new = swap
            old = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}[type(node.op)]
            self._replace_in(node.lineno, self._gap(node.left, node.right), pattern, new, f"{old} -> {new}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            start = self._at(node.lineno, node.col_offset)
            end = self._at(node.operand.lineno, node.operand.col_offset)
            if re.fullmatch(rb"not\s+", self.source[start:end]):
                self.points.append((node.lineno, start, end, "", "not dropped"))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if node.value is True or node.value is False or (type(node.value) is int and node.value in (0, 1)):
            start = self._at(node.lineno, node.col_offset)
            end = self._at(node.end_lineno, node.end_col_offset)  # type: ignore[arg-type]
            old = self.source[start:end].decode()
            new = _CONSTANT_SWAPS.get(old)
            if new is not None:
                self.points.append((node.lineno, start, end, new, f"{old} -> {new}"))


def _plain(op: type[ast.cmpop]) -> str:
    return {
        ast.Eq: "==",
        ast.NotEq: "!=",
        ast.Lt: "<",
        ast.LtE: "<=",
        ast.Gt: ">",
        ast.GtE: ">=",
        ast.In: "in",
        ast.NotIn: "not in",
        ast.Is: "is",
        ast.IsNot: "is not",
    }[op]


def mutants_of(module: str) -> list[Mutant]:
    source = (ROOT / module).read_bytes()
    finder = _Finder(source)
    tree = ast.parse(source)
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the module's docstring
    for statement in body:
        finder.visit(statement)
    lines = source.decode().splitlines()
    found = []
    for index, (line, start, end, new, change) in enumerate(
        sorted(finder.points, key=lambda p: (p[1], p[2]))
    ):
        mutated = source[:start] + new.encode() + source[end:]
        try:
            ast.parse(mutated)
        except SyntaxError:
            continue
        found.append(Mutant(module, index, line, change, start, end, new, lines[line - 1].strip()))
    return found


# --- running them ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | timeout | error
    seconds: float


def _copy_tree(into: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=IGNORED)
        elif source.exists():
            shutil.copy2(source, into / name)


def _pytest(copy: Path, tests: list[str], redis_db: int, timeout: float) -> tuple[int | None, float, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        "PYTHONDONTWRITEBYTECODE": "1",
        "TEST_REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
    }
    # Without the plugins of hypothesis and schemathesis (no test here needs them): a second less per run.
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    command += ["-p", "no:hypothesispytest", "-p", "no:schemathesis", "-p", "no:anyio"]
    started = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
            [*command, *tests],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - started, ""
    return done.returncode, time.monotonic() - started, done.stdout[-3000:] + done.stderr[-3000:]


def _run_all(
    mutants: list[Mutant], tests: dict[str, list[str]], jobs: int, redis_db: int
) -> tuple[dict[str, float], list[Outcome]]:
    """The baseline of each module (its tests unmutated, which must pass), then every mutant."""
    originals = {module: (ROOT / module).read_bytes() for module in tests}
    with tempfile.TemporaryDirectory(prefix="tradeguard-mutation-") as workdir:
        copies: Queue[tuple[Path, int]] = Queue()
        for job in range(jobs):
            copy = Path(workdir) / f"tree{job}"
            _copy_tree(copy)
            copies.put((copy, redis_db + job))

        def unmutated(module: str) -> tuple[str, int | None, float, str]:
            copy, db = copies.get()
            try:
                return (module, *_pytest(copy, tests[module], db, timeout=1800))
            finally:
                copies.put((copy, db))

        baseline: dict[str, float] = {}
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            runs = list(pool.map(unmutated, [t for t in tests if any(m.module == t for m in mutants)]))
        for module, code, seconds, output in runs:
            if code != 0:
                print(output)
                raise SystemExit(f"the tests of {module} fail unmutated (exit {code}): fix them first")
            baseline[module] = seconds
            print(f"baseline {module}: its tests pass in {seconds:.1f} s", flush=True)

        total = len(mutants)
        finished: list[Outcome] = []

        def run(mutant: Mutant) -> Outcome:
            copy, db = copies.get()
            target = copy / mutant.module
            try:
                source = originals[mutant.module]
                target.write_bytes(
                    source[: mutant.start] + mutant.replacement.encode() + source[mutant.end :]
                )
                code, seconds, output = _pytest(
                    copy, tests[mutant.module], db, timeout=3 * baseline[mutant.module] + 60
                )
            finally:
                target.write_bytes(originals[mutant.module])
                copies.put((copy, db))
            if code is None:
                status = "timeout"
            elif code == 0:
                status = "survived"
            elif code != 5:
                # A test failed (1), or the mutant broke an import: of a test module (2) or of a conftest
                # (4). The same arguments ran the tests unmutated, so any failure is the mutant's.
                status = "killed"
            else:  # no test ran at all: not a verdict
                print(output)
                status = "error"
            outcome = Outcome(mutant, status, seconds)
            finished.append(outcome)
            mark = {"survived": "SURVIVED", "error": "ERROR"}.get(status, status)
            print(f"[{len(finished)}/{total}] {mark:8} {mutant.name}  ({seconds:.1f} s)", flush=True)
            return outcome

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(run, mutants))
    return baseline, outcomes


def _configuration() -> dict[str, list[str]]:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutate"]
    return {module: list(tests) for module, tests in settings["modules"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="paths of modules in [tool.mutate.modules] (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument(
        "--line", type=int, action="append", help="only the mutants on this line (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument(
        "--redis-db", type=int, default=12, help="the first of the Redis databases the jobs use (default 12)"
    )
    options = parser.parse_args(argv)
    configured = _configuration()
    modules = options.modules or list(configured)
    unknown = [module for module in modules if module not in configured]
    if unknown:
        parser.error(f"not in [tool.mutate.modules] of pyproject.toml: {', '.join(unknown)}")
    mutants = [m for module in modules for m in mutants_of(module)]
    if options.line:
        mutants = [m for m in mutants if m.line in options.line]
    if options.list:
        for mutant in mutants:
            print(f"{mutant.name:60}  {mutant.source_line}")
        print(f"{len(mutants)} mutants")
        return 0
    started = time.monotonic()
    baseline, outcomes = _run_all(
        mutants, {m: configured[m] for m in modules}, options.jobs, options.redis_db
    )
    elapsed = time.monotonic() - started

    print(f"\nsurvivors ({elapsed / 60:.1f} min for {len(outcomes)} mutants):")
    for outcome in outcomes:
        if outcome.status == "survived":
            print(f"  {outcome.mutant.name:60}  {outcome.mutant.source_line}")
    print("\nscore per module (killed/total):")
    scores = {}
    for module in modules:
        mine = [o for o in outcomes if o.mutant.module == module]
        killed = sum(o.status in ("killed", "timeout") for o in mine)
        percent = 100 * killed / len(mine) if mine else 100.0
        scores[module] = {"killed": killed, "total": len(mine), "percent": round(percent, 1)}
        print(f"  {module:40} {killed:4}/{len(mine):<4} {percent:5.1f} %")
    if not options.line:  # a whole module's score: kept, with its survivors, beside the other modules'
        RESULTS.parent.mkdir(exist_ok=True)
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        for module in modules:
            saved[module] = {
                **scores[module],
                "baseline_seconds": round(baseline.get(module, 0.0), 1),
                "survivors": [
                    {k: v for k, v in asdict(o.mutant).items() if k in ("line", "change", "source_line")}
                    for o in outcomes
                    if o.mutant.module == module and o.status == "survived"
                ],
            }
        RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    return 1 if any(o.status == "error" for o in outcomes) else 0


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # so that the copies are removed


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    sys.exit(main())
