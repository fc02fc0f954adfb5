"""Guards the package layering of ``src/punchthrough``, its import cycles and its file sizes.

The simulator is the oracle the rest is measured against, so its core may depend only on
``netio`` and wire formats, never on the code it tests; the public API (``endpoint``) may not
depend on the applications and tools built on it. Imports are read with :mod:`ast` (nothing is
executed), wherever they appear: module level, inside functions, under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = "punchthrough"
MAX_LINES = 500

#: (package whose modules are checked, packages none of them may reach).
LAYERS: dict[str, tuple[str, ...]] = {
    "sim": (
        "endpoint",
        "relay",
        "traversal",
        "nat",
        "matrix",
        "cli",
        "lab",
        "scenario",
        "apps",
    ),
    "endpoint": ("apps", "scenario", "cli", "matrix", "lab"),
}

Graph = dict[str, set[str]]


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(src: Path, root: str = ROOT) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted((src / root).rglob("*.py"))}


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module ``name`` lives in: itself, or the nearest enclosing one (``pkg.mod.attr``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: Mapping[str, Path], root: str = ROOT) -> set[str]:
    """The project modules ``module`` imports (``from pkg import sub`` names ``pkg.sub``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up level-1 packages from this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            if name == root or name.startswith(root + "."):
                target = _resolve(name, modules)
                if target is not None and target != module:
                    found.add(target)
    return found


def import_graph(src: Path = SRC, root: str = ROOT) -> Graph:
    modules = find_modules(src, root)
    return {m: imports_of(m, p, modules, root) for m, p in modules.items()}


def _with_parents(graph: Graph) -> Graph:
    """Importing ``a.b.c`` runs ``a`` and ``a.b`` first: those are dependencies too."""
    out: Graph = {}
    for module, targets in graph.items():
        deps = set(targets)
        for target in targets:
            parts = target.split(".")
            deps.update(".".join(parts[:i]) for i in range(1, len(parts)))
        deps.discard(module)
        out[module] = {d for d in deps if d in graph}
    return out


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layering_violations(
    graph: Graph, package: str, forbidden: Iterable[str], root: str = ROOT
) -> list[str]:
    """Every way a module of ``package`` reaches a forbidden package, directly or through
    other modules: the shortest chain to each forbidden module it enters that layer by."""
    banned = [f"{root}.{name}" for name in forbidden]
    deps = _with_parents(graph)
    found: list[str] = []
    for start in sorted(m for m in graph if _in(m, f"{root}.{package}")):
        came_from: dict[str, str | None] = {start: None}
        hits: list[str] = []
        queue = deque([start])
        while queue:
            here = queue.popleft()
            for nxt in sorted(deps[here] - came_from.keys()):
                came_from[nxt] = here
                if any(_in(nxt, b) for b in banned):
                    hits.append(nxt)  # do not walk on inside the forbidden layer
                else:
                    queue.append(nxt)
        for hit in hits:
            if any(other.startswith(hit + ".") for other in hits):
                continue  # a package reached only because one of its modules is
            chain: list[str] = []
            at: str | None = hit
            while at is not None:
                chain.append(at)
                at = came_from[at]
            found.append(" -> ".join(reversed(chain)))
    return found


def _strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components in discovery order, members sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                components.append(sorted(members))
    return components


def import_cycles(graph: Graph) -> list[str]:
    """Every elementary import cycle, as ``a -> b -> a`` starting from its smallest module.

    Only written imports count: a package ``__init__`` re-exporting its own submodules is not a
    cycle, but a submodule importing a name back from that ``__init__`` is.
    """
    cycles: list[str] = []
    for component in _strongly_connected(graph):
        for i, start in enumerate(component):  # cycles whose smallest member is ``start``
            _cycles_from([start], set(component[i:]), graph, cycles)
    return cycles


def _cycles_from(path: list[str], allowed: set[str], graph: Graph, out: list[str]) -> None:
    for nxt in sorted(graph[path[-1]] & allowed):
        if nxt == path[0]:
            out.append(" -> ".join([*path, nxt]))
        elif nxt not in path:
            _cycles_from([*path, nxt], allowed, graph, out)


def long_files(src: Path = SRC, root: str = ROOT, limit: int = MAX_LINES) -> list[str]:
    out = []
    for path in sorted((src / root).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > limit:
                out.append(f"{path.relative_to(src)}: {n} lines")
    return out


# -- the guards ---------------------------------------------------------------------------------
def test_simulator_core_depends_only_on_netio_and_wire_formats() -> None:
    bad = layering_violations(import_graph(), "sim", LAYERS["sim"])
    assert not bad, "the simulator core imports code it simulates for:\n" + "\n".join(bad)


def test_public_api_does_not_depend_on_what_is_built_on_it() -> None:
    bad = layering_violations(import_graph(), "endpoint", LAYERS["endpoint"])
    assert not bad, "punchthrough.endpoint imports an application or tool:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph())
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(cycles)


def test_no_source_file_over_500_lines() -> None:
    big = long_files()
    assert not big, f"files over {MAX_LINES} lines:\n" + "\n".join(big)


# -- the analysis itself, on a small made-up package --------------------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_analysis_sees_every_kind_of_import(tmp_path: Path) -> None:
    src = _package(
        tmp_path,
        {
            "__init__.py": "from pkg.low.a import A\n",
            "low/__init__.py": "",
            "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg.low.b import B\nA = 1\n",
            "low/b.py": "def f():\n    from . import a\n    import pkg.high.app\nB = 2\n",
            "high/__init__.py": "",
            "high/app.py": "from ..low import b as _b\nfrom pkg.low.a import A\n",
            "big.py": "x = 1\n" * (MAX_LINES + 1),
        },
    )
    graph = import_graph(src, "pkg")
    assert graph["pkg"] == {"pkg.low.a"}
    assert graph["pkg.low.a"] == {"pkg.low.b"}  # under TYPE_CHECKING
    assert graph["pkg.low.b"] == {"pkg.low.a", "pkg.high.app"}  # relative, in a function
    assert graph["pkg.high.app"] == {"pkg.low.b", "pkg.low.a"}
    assert import_cycles(graph) == [
        "pkg.high.app -> pkg.low.a -> pkg.low.b -> pkg.high.app",
        "pkg.high.app -> pkg.low.b -> pkg.high.app",
        "pkg.low.a -> pkg.low.b -> pkg.low.a",
    ]
    assert layering_violations(graph, "low", ["high"], "pkg") == [
        "pkg.low.a -> pkg.low.b -> pkg.high.app",
        "pkg.low.b -> pkg.high.app",
    ]
    assert long_files(src, "pkg") == [f"pkg/big.py: {MAX_LINES + 1} lines"]


def test_a_package_init_counts_as_a_dependency_of_its_submodules(tmp_path: Path) -> None:
    """``from pkg.wire import codec`` runs ``pkg/wire/__init__.py``: what it loads is reached."""
    src = _package(
        tmp_path,
        {
            "__init__.py": "",
            "core.py": "from pkg.wire import codec\n",
            "wire/__init__.py": "from pkg.wire.client import Client\n",
            "wire/codec.py": "",
            "wire/client.py": "import pkg.top\n",
            "top.py": "",
        },
    )
    graph = import_graph(src, "pkg")
    assert import_cycles(graph) == []
    assert layering_violations(graph, "core", ["top"], "pkg") == [
        "pkg.core -> pkg.wire -> pkg.wire.client -> pkg.top"
    ]
