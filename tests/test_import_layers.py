"""The package's layers (docs/DESIGN.md): no import cycle between modules, no upward import.

Every module of ``spikebridge`` is read with ``ast`` (nothing is imported), and every import
statement counts wherever it stands: at module level, inside a function (a lazy import), under
``if TYPE_CHECKING``, absolute or relative. An import of ``spikebridge.a.b`` runs
``spikebridge/a/__init__.py`` first, so it also counts as an import of ``spikebridge.a``
(except from inside ``spikebridge.a`` itself, which Python has already started).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = "spikebridge"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Low -> high; a module may import from its own layer or any layer below it. Keys are the
# first name under ``spikebridge`` (a folder or a top-level module); "" is the package's
# own ``__init__``. ``conversion`` is listed so that the package is placed when it lands.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("", "errors"),
    ("data",),
    ("nn",),
    ("models",),
    ("config", "config_core", "config_cli", "config_commands"),
    ("methods", "conversion"),
    ("engine",),
    ("analysis", "export"),
    ("runs",),
    ("experiments",),
    ("demo", "demo_progress", "cli", "__main__"),
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module of ours that ``name`` (a module, or a name inside one) belongs to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _with_parents(target: str, importer: str, package: str) -> set[str]:
    """``target`` and the packages above it that importing it runs (not the importer's own)."""
    parts, out = target.split("."), {target}
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if not (importer == parent or importer.startswith(parent + ".")):
            out.add(parent)
    return {m for m in out if m == package or m.startswith(package + ".")}


def imports_of(module: str, path: Path, modules: Mapping[str, Path], package: str) -> set[str]:
    """The modules of ours that ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: Iterable[str] = ()
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            owner = _owner(name, modules)
            if owner is not None and owner.split(".")[0] == package:
                found |= _with_parents(owner, module, package)
    found.discard(module)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(root, package)
    return {m: imports_of(m, path, modules, package) for m, path in modules.items()}


def layer(module: str, package: str = PACKAGE) -> str:
    """The layer key of a module: its first name under the package ("" for the package)."""
    rest = module[len(package) + 1 :]
    return rest.split(".")[0]


def upward_imports(graph: Mapping[str, set[str]], package: str = PACKAGE) -> list[str]:
    """``"a -> b"`` for every import of a higher layer (and of modules no layer names)."""
    problems = [
        f"{module} is in no layer of LAYERS (tests/test_import_layers.py)"
        for module in graph
        if layer(module, package) not in LAYER_OF
    ]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            mine, theirs = (
                LAYER_OF.get(layer(module, package)),
                LAYER_OF.get(layer(target, package)),
            )
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(f"{module} -> {target} (layer {theirs} above {mine})")
    return sorted(problems)


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth <= number of modules (~100)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


# ----------------------------------------------------------------------------- the package


def test_every_module_is_read_and_lazy_imports_count():
    graph = import_graph()
    assert len(graph) > 50
    # runs/export.py imports spikebridge.export inside export_run (a lazy import).
    assert "spikebridge.export" in graph["spikebridge.runs.export"]
    # ``from spikebridge.engine import checkpoint as ckpt`` names the submodule.
    assert "spikebridge.engine.checkpoint" in graph["spikebridge.runs.train"]


def test_no_import_cycle_between_modules():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_a_higher_layer():
    problems = upward_imports(import_graph())
    assert not problems, "upward imports:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- the checker


@pytest.fixture
def fake_package(tmp_path: Path):
    """A throwaway ``spikebridge`` tree: writes files, returns its import graph."""
    root = tmp_path / PACKAGE

    def build(files: Mapping[str, str]) -> dict[str, set[str]]:
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return import_graph(root)

    return build


def test_a_lazy_cycle_and_an_upward_import_are_reported(fake_package):
    graph = fake_package({
        "__init__.py": "",
        "errors.py": "",
        "engine/__init__.py": "",
        "engine/a.py": "def f():\n    from spikebridge.engine import b\n",
        "engine/b.py": "from . import a\n",
        "nn/__init__.py": "",
        "nn/low.py": "def g():\n    from ..engine.a import f\n",
    })  # fmt: skip
    assert import_cycles(graph) == [["spikebridge.engine.a", "spikebridge.engine.b"]]
    assert upward_imports(graph) == [
        "spikebridge.nn.low -> spikebridge.engine (layer 6 above 2)",
        "spikebridge.nn.low -> spikebridge.engine.a (layer 6 above 2)",
    ]


def test_a_cycle_through_a_package_init_is_reported(fake_package):
    graph = fake_package({
        "__init__.py": "",
        "engine/__init__.py": "from spikebridge.engine.x import X\n",
        "engine/x.py": "import spikebridge.analysis.y\nX = 1\n",
        "analysis/__init__.py": "",
        "analysis/y.py": "from spikebridge.engine import X\n",
    })  # fmt: skip
    assert import_cycles(graph) == [
        ["spikebridge.analysis.y", "spikebridge.engine", "spikebridge.engine.x"]
    ]


def test_a_module_in_no_layer_is_reported(fake_package):
    graph = fake_package({"__init__.py": "", "plugins/p.py": "from spikebridge import errors\n"})
    assert upward_imports(graph) == [
        "spikebridge.plugins.p is in no layer of LAYERS (tests/test_import_layers.py)"
    ]
