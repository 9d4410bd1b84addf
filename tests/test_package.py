"""The package's shape: its import graph has no circle, loading a network needs no algorithm,
and the README's layout names the files that exist.

The import graph is read from the source with ``ast``, so nothing is
imported to build it. Every ``import`` and ``from ... import`` statement
counts, wherever it stands: at module level, inside a function (a lazy
import), a class, ``try`` or ``if``. A function-level import still makes
one module depend on another, and a circle through one is still a circle
(``engines.base`` and ``engines.reference`` once formed one that way).
Relative imports are resolved against the importing module's package;
``from X import name`` is an edge to the module ``X.name`` when that is a
module of the package, else to ``X``. Importing ``a.b.c`` also runs the
packages ``a`` and ``a.b`` first, so those count as edges too, except the
importer's own packages: Python has run those before the importer itself,
so they are no dependency of it (naming one explicitly, as in
``from . import EXIT_OK``, is). Imports made by name at run time
(``importlib.import_module``, used by the engine registry and the CLI's
command table) are not statements and do not count.
"""

import ast
import re

import pytest

from conftest import REPO

PACKAGE = REPO / "graphchallenge"


# ---------------------------------------------------------------- the import graph

def module_names(root):
    """``{dotted name: path}`` of every module of the package at ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(path):
    return path.name == "__init__.py"


def _packages_above(name):
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def _imported(target, importer, modules):
    """``target`` and the packages Python runs before it, less the importer's own."""
    own = _packages_above(importer) | {importer}
    return {module for module in _packages_above(target) - own | {target} if module in modules}


def _base(name, path, node):
    """The absolute module an ``ImportFrom`` names (before its imported names)."""
    if node.level == 0:
        return node.module
    package = name.split(".") if _is_package(path) else name.split(".")[:-1]
    if node.level > 1:
        package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def import_graph(root):
    """``{module: set of modules it imports}`` within the package at ``root``."""
    modules = module_names(root)
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets |= _imported(alias.name, name, modules)
            elif isinstance(node, ast.ImportFrom):
                base = _base(name, path, node)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in modules:
                        targets |= _imported(submodule, name, modules)
                    elif base in modules:
                        # A name defined in ``base`` itself: an edge to it, own package or not.
                        targets |= _imported(base, name, modules) | {base}
        targets.discard(name)
        graph[name] = targets
    return graph


def find_cycle(graph):
    """One import circle as ``[a, b, ..., a]``, or None."""
    state = {}
    stack = []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def reachable(graph, roots):
    """Every module the ``roots`` import, directly or not (the roots included)."""
    seen, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


# ---------------------------------------------------------------- the checker can fail

def _toy_package(root, files):
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "toy"


def test_the_checker_finds_circles_at_module_and_function_level(tmp_path):
    toy = _toy_package(tmp_path, {
        "toy/__init__.py": "",
        "toy/a.py": "from . import b\n",
        "toy/b.py": "def late():\n    from .a import thing\n    return thing\n",
        "toy/sub/__init__.py": "",
        "toy/sub/c.py": "from ..a import x\nimport toy.b\n",
    })
    graph = import_graph(toy)
    assert graph["toy.a"] == {"toy.b"}
    assert graph["toy.b"] == {"toy.a"}
    assert graph["toy.sub.c"] == {"toy.a", "toy.b"}
    assert find_cycle(graph) == ["toy.a", "toy.b", "toy.a"]
    (toy / "b.py").write_text("def late():\n    return 1\n")
    assert find_cycle(import_graph(toy)) is None
    # A package __init__ that imports a module importing a name back from it
    # is a circle too; a module's own packages alone are not.
    (toy / "__init__.py").write_text("from .sub import c\n")
    assert find_cycle(import_graph(toy)) is None
    (toy / "__init__.py").write_text("from .sub import c\nVERSION = 1\n")
    (toy / "sub" / "c.py").write_text("from .. import VERSION\n")
    assert find_cycle(import_graph(toy)) == ["toy", "toy.sub.c", "toy"]


def test_reachable_follows_parent_packages(tmp_path):
    toy = _toy_package(tmp_path, {
        "toy/__init__.py": "",
        "toy/loader.py": "from .algo.ops import kernel\n",
        "toy/algo/__init__.py": "from . import heavy\n",
        "toy/algo/ops.py": "",
        "toy/algo/heavy.py": "",
    })
    assert "toy.algo.heavy" in reachable(import_graph(toy), ["toy.loader"])


# ---------------------------------------------------------------- the package

@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_the_package_has_no_import_circle(graph):
    assert len(graph) > 30 and "graphchallenge.engines.exactness" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_loading_a_network_imports_neither_compaction_nor_fine_tuning(graph):
    # What `graphchallenge run --network DIR` uses: loading, the format, the
    # runner, and every engine (the registry imports them by name).
    engines = [name for name in graph if name.startswith("graphchallenge.engines")]
    roots = ["graphchallenge.network", "graphchallenge.derived", "graphchallenge.runner"] + engines
    loaded = reachable(graph, roots)
    assert {"graphchallenge.io", "graphchallenge.derived", "graphchallenge.engines.exactness"} <= loaded
    algorithms = {name for name in loaded
                  if name in ("graphchallenge.compress", "graphchallenge.finetune")
                  or name.startswith("graphchallenge.fssl")}
    assert not algorithms, f"network loading reaches {sorted(algorithms)}"


def test_the_engine_interface_and_the_exactness_machinery_import_no_engine(graph):
    engine_modules = {name for name in graph if name.startswith("graphchallenge.engines.")}
    assert not graph["graphchallenge.engines.base"] & engine_modules
    assert not graph["graphchallenge.engines.exactness"] & engine_modules
    assert graph["graphchallenge.engines.reference"] >= {"graphchallenge.engines.base",
                                                         "graphchallenge.engines.exactness"}


# ---------------------------------------------------------------- the README's layout

def _readme_layout():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def _layout_entries():
    """``[(names, text)]`` of the README's layout under ``graphchallenge/``.

    An entry starts on a line indented by two spaces and runs on over the
    more deeply indented lines below it; its names are what comes before the
    description ("io.py", "engines/", or "plot.py, info.py, cli/ (...)").
    """
    lines = _readme_layout().splitlines()
    assert lines[1].strip() == "graphchallenge/"
    entries = []
    for line in lines[2:]:
        if line.startswith("   ") and entries:
            entries[-1][1].append(line.strip())
        elif line.startswith("  "):
            head = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            names = {entry.strip().split()[0] for entry in head.split(",")}
            entries.append((names, [line.strip()]))
    return [(names, " ".join(text)) for names, text in entries]


def test_the_readme_layout_names_every_module_and_only_those():
    entries = _layout_entries()
    named = set().union(*(names for names, _ in entries))
    present = {path.name if path.is_file() else path.name + "/"
               for path in PACKAGE.iterdir()
               if (path.suffix == ".py" and path.name not in ("__init__.py", "__main__.py"))
               or (path.is_dir() and (path / "__init__.py").is_file())}
    assert named == present
    # A subpackage's entry names each of its modules (cli/: one per subcommand).
    for names, text in entries:
        for package in (name[:-1] for name in names if name.endswith("/") and name != "cli/"):
            for path in sorted((PACKAGE / package).glob("*.py")):
                if path.name != "__init__.py":
                    assert re.search(rf"\b{path.stem}\b", text), \
                        f"README layout: {package}/ does not name {path.name}"
