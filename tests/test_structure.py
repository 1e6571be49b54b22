"""The layers of the code base, checked on its import graph (issue 15, item 4).

    ccpulse.core            the pure domain core: imports nothing of the project above it
    product                 ccpulse.* (config, kafka_security, ...), streams, sinks, schemas
    ccpulse.commands        the user commands (simulate, replay, demo, the local broker)
    ccpulse.tools           bench, chaos, fault injection: developer tooling
    ccpulse.cli             the command line on top: may import every layer

A lazy import (inside a function) or one under ``TYPE_CHECKING`` ties two modules as
much as a top-level one: a refactoring that moves it to the top would create the
cycle, and the two modules can no longer be understood (or tested) one without the
other. So every ``import`` statement anywhere in a module counts here.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ccpulse", "streams", "sinks", "schemas")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, wherever the statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            # `from pkg import mod` imports the module pkg.mod, `from mod import name` only mod
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    # A package's __init__ is not a layer of its own: `from ccpulse.core import sketch`
    # names the package on its way to the module.
    return {name: {d for d in deps if d not in PACKAGES and not name.startswith(d + ".")}
            for name, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(allowed: Callable[[str], bool], layer: Callable[[str], bool]) -> list[str]:
    return sorted(f"{src} imports {dst}" for src, deps in _graph().items() if layer(src)
                  for dst in deps if not allowed(dst))


def test_no_import_cycle_lazy_imports_included() -> None:
    assert _cycles(_graph()) == []


def test_the_core_imports_nothing_above_it() -> None:
    assert _violations(lambda dst: _in(dst, "ccpulse.core"), lambda src: _in(src, "ccpulse.core")) == []


def _product(module: str) -> bool:
    return not any(_in(module, top) for top in ("ccpulse.cli", "ccpulse.commands", "ccpulse.tools"))


def test_the_product_imports_no_command_no_tool_and_not_the_cli() -> None:
    assert _violations(_product, _product) == []


def test_the_user_commands_import_no_tool_and_not_the_cli() -> None:
    assert _violations(lambda dst: not (_in(dst, "ccpulse.tools") or _in(dst, "ccpulse.cli")),
                       lambda src: _in(src, "ccpulse.commands")) == []


def test_the_tools_do_not_import_the_cli() -> None:
    assert _violations(lambda dst: not _in(dst, "ccpulse.cli"), lambda src: _in(src, "ccpulse.tools")) == []


def test_user_commands_and_tools_live_in_their_packages() -> None:
    modules = set(_modules())
    for name in ("simulate", "simulate_channels", "scenarios", "replay", "demo", "local_kafka"):
        assert f"ccpulse.commands.{name}" in modules and f"ccpulse.{name}" not in modules
    for name in ("bench", "bench_kafka", "bench_latency", "bench_worker", "chaos", "chaos_checks",
                 "chaos_worker", "fault_injection", "bad_input"):
        assert f"ccpulse.tools.{name}" in modules and f"ccpulse.{name}" not in modules


# Every command and flag of the CLI before the packages moved (OPERATIONS.md is a
# contract): later issues may add flags, none may go.
COMMAND_FLAGS = {
    "demo": {"--agents", "--duration", "--rate", "--scenario", "--scenarios-file"},
    "worker": {"--loglevel", "--role"},
    "simulate": {"--agents", "--channels", "--chat-rate", "--duration", "--patience", "--queues", "--rate",
                 "--scenario", "--scenarios-file", "--seed", "--service-mean", "--speed", "--start",
                 "--ticket-rate", "--wrapup-mean"},
    "replay": {"--allow-late", "--dry-run", "--limit", "--mapping", "--on-error", "--partition", "--speed",
               "file"},
    "kafka": {"--fresh", "--port", "action"},
    "rules": {"--check", "--output"},
    "bench": {"--events", "--json", "--keep", "--loads", "--profile", "--publish-interval", "--short",
              "--worker-pythonpath", "--workers"},
    "chaos": {"--bootstrap", "--json", "--scenarios", "--seed", "--sentinel-gap", "--short", "--soak-events",
              "--workdir"},
}


def test_every_command_keeps_its_flags() -> None:
    from ccpulse.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, flags in COMMAND_FLAGS.items():
        actions = sub.choices[command]._actions
        assert flags <= {o for a in actions for o in (a.option_strings or [a.dest])}, command


@pytest.mark.parametrize("command", sorted(COMMAND_FLAGS))
def test_every_command_answers_help_in_a_fresh_process(command: str) -> None:
    # A fresh interpreter, as the installed `ccpulse` runs: an import that only worked
    # because a test had already loaded some module shows here.
    done = subprocess.run([sys.executable, "-m", "ccpulse.cli", command, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"usage: ccpulse {command}" in done.stdout
