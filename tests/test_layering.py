"""Structural checks on the package source, read with ``ast`` (nothing from samedge is imported).

These guard the layering of ``src/samedge``:

* the import graph between the package's modules has no cycles (function-level imports count);
* the run layer (``cli``, ``sweep``, ``run``, ``__main__``) sits on top: nothing below imports it;
* the built-in optimizer names are spelled out as strings in at most a few modules.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

PACKAGE = "samedge"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / PACKAGE

RUN_LAYER = ("samedge.cli", "samedge.sweep", "samedge.run", "samedge.__main__")

OPTIMIZER_NAMES = frozenset({"gd", "sam", "momentum", "nesterov", "usam", "sam_momentum"})
# The modules allowed to spell the optimizer names out: the registry, the stability edges, the CLI.
OPTIMIZER_NAME_HOMES = ("samedge.optimizers", "samedge.edges", "samedge.cli")
# Task presets may name an optimizer (to give its default step size); they are not counted.
TASK_PRESETS = "samedge.tasks"

MAX_CYCLES_LISTED = 50


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


class Module(NamedTuple):
    name: str  # dotted name: samedge.cli, samedge.tasks (for tasks/__init__.py), samedge.tasks.mnist
    path: Path
    tree: ast.Module
    is_package: bool  # an __init__.py


def parse_package(package_dir: Path = PACKAGE_DIR, package: str | None = None) -> dict[str, Module]:
    """Parse every ``.py`` file under ``package_dir``; the dotted module name -> its parsed source."""
    package = package or package_dir.name
    assert package_dir.is_dir(), f"package source not found at {package_dir}"
    modules: dict[str, Module] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if any(not part.isidentifier() for part in parts[:-1]):
            continue  # not importable (e.g. a data folder with a dash in its name)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join((package, *parts))
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        modules[name] = Module(name, path, tree, is_package)
    assert package in modules, f"{package_dir} has no __init__.py"
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (or any ``<x>.TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(tree: ast.AST):
    """Every ``import``/``from ... import`` statement anywhere in ``tree`` (functions, classes,
    ``try`` blocks included) except under ``if TYPE_CHECKING:``, which never runs (its ``else:`` does)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_from(module: Module, node: ast.ImportFrom) -> str | None:
    """The absolute name of the module in ``from <here> import ...``; None if above the package."""
    if node.level == 0:
        return node.module
    # The package a relative import starts from: the module itself for an __init__, else its parent.
    base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if node.level - 1 >= len(base):
        return None
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(name: str, modules: dict[str, Module], package: str) -> list[str]:
    """The package's modules that importing ``name`` runs: ``name`` and its parent packages, but not
    the top package itself unless ``name`` is it (every module is inside it; counting that edge would
    make a trivial cycle of each re-export in ``__init__.py``)."""
    parts = name.split(".")
    if parts[0] != package:
        return []
    if len(parts) == 1:
        return [package]
    prefixes = (".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return [prefix for prefix in prefixes if prefix in modules]


def import_graph(modules: dict[str, Module], package: str = PACKAGE) -> dict[str, dict[str, list[int]]]:
    """importer -> imported module -> the lines of the import statements, between the modules of
    ``package``. Only import statements count (not ``importlib.import_module("...")`` strings)."""
    graph: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in modules}
    for module in modules.values():
        for node in _import_statements(module.tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets += _targets(alias.name, modules, package)
            else:
                base = _resolve_from(module, node)
                if base is None:
                    continue
                base_targets = _targets(base, modules, package)
                # `from samedge import x` with x a submodule imports samedge.x, not a name of samedge.
                names_modules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                names_only = [a.name for a in node.names if f"{base}.{a.name}" not in modules]
                if base == package and not names_only:
                    base_targets = []
                targets += base_targets + names_modules
            for target in targets:
                if target != module.name and node.lineno not in graph[module.name][target]:
                    graph[module.name][target].append(node.lineno)
    return {name: dict(edges) for name, edges in graph.items()}


def _strongly_connected(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; only those with 2+ modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return sorted(components)


def find_cycles(graph: dict[str, dict[str, list[int]]], limit: int = MAX_CYCLES_LISTED) -> list[list[str]]:
    """The elementary import cycles (self-imports ignored), each as [a, b, ..., a] starting from its
    alphabetically first module; at most ``limit`` of them."""
    cycles: list[list[str]] = []
    for component in _strongly_connected(graph):
        members = set(component)
        for start in component:  # sorted: each cycle is found once, from its smallest module
            allowed = {m for m in members if m >= start}
            path = [start]
            work = [iter(sorted(t for t in graph[start] if t in allowed))]
            while work and len(cycles) < limit:
                for child in work[-1]:
                    if child == start:
                        cycles.append(path + [start])
                    elif child not in path:
                        path.append(child)
                        work.append(iter(sorted(t for t in graph[child] if t in allowed)))
                        break
                else:
                    work.pop()
                    path.pop()
    return cycles


def format_cycle(cycle: list[str], graph: dict[str, dict[str, list[int]]]) -> str:
    """``a -> b -> a``, then where each link is: ``a line 3 imports b; b line 9 imports a``."""
    links = "; ".join(
        f"{a} line{'s' if len(graph[a][b]) > 1 else ''} {', '.join(map(str, sorted(graph[a][b])))} imports {b}"
        for a, b in zip(cycle, cycle[1:])
    )
    return f"{' -> '.join(cycle)}\n      ({links})"


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_no_import_cycle():
    """The modules of samedge import one another without cycles.

    Every import statement counts, function-level ones too: a cycle hidden inside a function still
    ties the two modules together (neither can be understood, tested or moved without the other) and
    only works by the accident of import order. Imports under ``if TYPE_CHECKING:`` never run and are
    not counted; nor is a package's ``__init__`` counted as imported merely because a submodule is.
    """
    graph = import_graph(parse_package())
    cycles = find_cycles(graph)
    more = " (first ones only)" if len(cycles) >= MAX_CYCLES_LISTED else ""
    assert not cycles, f"{len(cycles)} import cycle(s) between samedge modules{more}:\n" + "\n".join(
        f"  {format_cycle(cycle, graph)}" for cycle in cycles
    )


def run_layer_offenders(modules: dict[str, Module], run_layer=RUN_LAYER) -> list[str]:
    """``samedge.x imports samedge.cli (line N)`` for each import of a run-layer module from outside it."""
    graph = import_graph(modules)
    layer = {name for name in run_layer if name in modules}
    return [
        f"{importer} imports {target} (line {line})"
        for importer in sorted(graph)
        if importer not in layer
        for target in sorted(graph[importer])
        if target in layer
        for line in sorted(graph[importer][target])
    ]


def test_run_layer_on_top():
    """Nothing outside the run layer (samedge.cli, .sweep, .run, .__main__) imports it.

    The run layer parses command lines, launches and schedules runs; the library below it (training,
    measurement, storage, plots) must be usable without it. An import from below into the run layer,
    even inside a function, inverts the layering.
    """
    offenders = run_layer_offenders(parse_package())
    assert not offenders, "modules below the run layer import it:\n" + "\n".join(
        f"  {o}" for o in offenders
    )


def optimizer_name_constants(modules: dict[str, Module]) -> dict[str, dict[str, list[int]]]:
    """module -> optimizer name -> the lines of the string constants exactly equal to it (task
    preset modules left out)."""
    found: dict[str, dict[str, list[int]]] = {}
    for name, module in sorted(modules.items()):
        if name == TASK_PRESETS or name.startswith(TASK_PRESETS + "."):
            continue
        exported = {id(c) for node in ast.walk(module.tree) if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                    for c in ast.walk(node.value)}  # ``__all__`` names functions, not optimizers
        for node in ast.walk(module.tree):
            if id(node) in exported:
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in OPTIMIZER_NAMES:
                found.setdefault(name, {}).setdefault(node.value, []).append(node.lineno)
    return found


def test_optimizer_names_in_few_modules():
    """The built-in optimizer names are spelled out as strings only in the registry (and edges, cli).

    A string constant exactly equal to gd, sam, momentum, nesterov, usam or sam_momentum (dict keys
    included; docstrings and other text that merely mention a name do not count) is a hard-coded
    dispatch on the optimizer. Spread over many modules, adding or renaming an optimizer means
    editing all of them; kept in samedge.optimizers (the registry), samedge.edges and samedge.cli,
    there is one place to look. Task presets (samedge.tasks) may name an optimizer's step size.
    """
    found = optimizer_name_constants(parse_package())
    offenders = sorted(set(found) - set(OPTIMIZER_NAME_HOMES))

    def row(module: str) -> str:
        names = ", ".join(
            f"{name!r} (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, sorted(lines)))})"
            for name, lines in sorted(found[module].items())
        )
        return f"  {module:<22} {names}"

    allowed_present = [m for m in OPTIMIZER_NAME_HOMES if m in found]
    message = (
        f"optimizer names appear as string constants in {len(found)} modules (at most 3 allowed, "
        f"among {', '.join(OPTIMIZER_NAME_HOMES)}); move them to samedge.optimizers:\n"
        + "\n".join(row(m) for m in offenders)
    )
    if allowed_present:
        message += "\n(allowed, for reference:)\n" + "\n".join(row(m) for m in allowed_present)
    assert not offenders and len(found) <= 3, message


def test_graph_builder_finds_function_level_cycle(tmp_path):
    """The graph builder finds a cycle closed by a function-level import, and invents none.

    Checked on a throwaway package: ``a`` imports ``b`` at module level and ``b`` imports ``a``
    inside a function (a cycle); ``c`` imports ``a`` only under ``if TYPE_CHECKING:`` while ``a``
    imports ``c`` (no cycle); ``__init__`` re-exports from ``c`` and names ``a`` only in an
    ``importlib.import_module`` string; ``sub.d`` imports a name of the top package explicitly
    (an edge), but no module gets an edge to its parent package merely for being inside it.
    """
    pkg = tmp_path / "fakepkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": (
            "import importlib\n"
            "from fakepkg.c import thing\n"
            "VERSION = 1\n"
            "def __getattr__(name):\n"
            "    return importlib.import_module('fakepkg.a')\n"
        ),
        "a.py": (
            "from fakepkg import b\n"
            "import fakepkg.c\n"
            "import fakepkg.sub.d\n"
        ),
        "b.py": (
            "def late():\n"
            "    from . import a\n"
            "    return a\n"
        ),
        "c.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from fakepkg.a import b\n"
            "thing = 1\n"
        ),
        "sub/__init__.py": "",
        "sub/d.py": "from .. import VERSION\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)

    modules = parse_package(pkg)
    assert sorted(modules) == ["fakepkg", "fakepkg.a", "fakepkg.b", "fakepkg.c", "fakepkg.sub", "fakepkg.sub.d"]
    graph = import_graph(modules, package="fakepkg")
    edges = {(src, dst, tuple(lines)) for src, targets in graph.items() for dst, lines in targets.items()}
    assert edges == {
        ("fakepkg", "fakepkg.c", (2,)),
        ("fakepkg.a", "fakepkg.b", (1,)),
        ("fakepkg.a", "fakepkg.c", (2,)),
        ("fakepkg.a", "fakepkg.sub", (3,)),
        ("fakepkg.a", "fakepkg.sub.d", (3,)),
        ("fakepkg.b", "fakepkg.a", (2,)),
        ("fakepkg.sub.d", "fakepkg", (1,)),
    }
    cycles = find_cycles(graph)
    assert cycles == [["fakepkg.a", "fakepkg.b", "fakepkg.a"]]
    assert format_cycle(cycles[0], graph).startswith("fakepkg.a -> fakepkg.b -> fakepkg.a\n")

    # Without the function-level import there is no cycle at all.
    (pkg / "b.py").write_text("def late():\n    return None\n")
    assert find_cycles(import_graph(parse_package(pkg), package="fakepkg")) == []
