"""Package structure: no import circles, and the layers only import downwards.

The import graph is read from the source (``ast`` for Python, a line scan for
Cython), so the test needs no build and sees imports inside functions, which
run later but still tie the modules together.  Modules are discovered by
walking ``src/fastsyn`` and the rules are written as name prefixes, so the
test keeps holding when modules move (``fastsyn.cli``, a ``fastsyn.metrics``
package).
"""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "fastsyn"

#: Modules below ``fastsyn.bench`` and the CLI in the layering.
CORE = (
    "fastsyn._kernels",
    "fastsyn.fields",
    "fastsyn.metrics",
    "fastsyn.imwarp",
    "fastsyn.pyramid",
    "fastsyn.patch",
    "fastsyn._threads",
    "fastsyn._validation",
)
UPPER = ("fastsyn.bench", "fastsyn.cli")

_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+(\S+)\s+c?import\b|c?import\s+([\w.]+))")


# --------------------------------------------------------------------------
# Building the graph
# --------------------------------------------------------------------------


def module_name(path, src):
    """Dotted name of a source file under ``src`` (a package for ``__init__``)."""
    rel = path.relative_to(src)
    parts = list(rel.parts)
    parts[-1] = parts[-1].split(".", 1)[0]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(src, package=PACKAGE):
    """Module name -> (path, is_package) for every .py/.pyx/.pxd file of ``package``."""
    modules = {}
    for path in sorted((src / package).rglob("*")):
        if path.suffix in (".py", ".pyx", ".pxd") and "__pycache__" not in path.parts:
            modules[module_name(path, src)] = (path, path.name.startswith("__init__."))
    return modules


def _resolve(target, names, modules):
    """Edges for ``from target import names``: a submodule when one is named."""
    found = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
    if len(found) < len(names) or not found:
        found.add(target)
    return found


def _relative_base(module, is_package, level):
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts)


def _import_module_target(node):
    """The literal name given to ``importlib.import_module("...")``, if any."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


def python_imports(module, is_package, tree, modules):
    """Targets of every import statement (at any depth) of a parsed module."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _relative_base(module, is_package, node.level)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            out |= _resolve(target, [a.name for a in node.names], modules)
        elif isinstance(node, ast.Call):
            target = _import_module_target(node)
            if target is not None and not target.startswith("."):
                out.add(target)
    return out


def cython_imports(text):
    """Modules named by ``import``/``cimport`` lines of a Cython file."""
    out = set()
    for line in text.splitlines():
        m = _CYTHON_IMPORT.match(line)
        if m:
            out.add(m.group(1) or m.group(2))
    return out


def import_graph(src, package=PACKAGE):
    """Module -> set of modules of ``package`` it imports (itself excluded)."""
    modules = discover(src, package)
    graph = {}
    for name, (path, is_package) in modules.items():
        text = path.read_text()
        if path.suffix == ".py":
            targets = python_imports(name, is_package, ast.parse(text, str(path)), modules)
        else:
            targets = cython_imports(text)
        graph[name] = {
            t for t in targets
            if (t == package or t.startswith(package + ".")) and t != name
        }
    return graph


# --------------------------------------------------------------------------
# Checking it
# --------------------------------------------------------------------------


def find_cycle(graph):
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or ``None``.

    Depth-first search with an explicit stack (no recursion limit); a node met
    again while still on the current path closes a circle.
    """
    state = {}  # node -> 1 on the current path, 2 finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def under(name, prefixes):
    """Whether ``name`` is one of ``prefixes`` or a module inside one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def reach(graph, start):
    """Every module reachable from ``start``, with the path that reaches it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                todo.append(nxt)
    return paths


def layer_violations(graph):
    """Messages for every import that breaks the layering."""
    out = []
    for mod, targets in sorted(graph.items()):
        if under(mod, ("fastsyn._kernels",)):
            out += [f"{mod} imports {t}" for t in sorted(targets)
                    if not under(t, ("fastsyn._kernels",))]
        if under(mod, CORE):
            out += [f"{mod} reaches {t} via {' -> '.join(p)}"
                    for t, p in sorted(reach(graph, mod).items()) if under(t, UPPER)]
        if under(mod, ("fastsyn.bench",)):
            out += [f"{mod} imports {t} directly" for t in sorted(targets)
                    if under(t, ("fastsyn._kernels",))]
            # The harness serves the command line, never the other way round.
            out += [f"{mod} reaches {t} via {' -> '.join(p)}"
                    for t, p in sorted(reach(graph, mod).items()) if under(t, ("fastsyn.cli",))]
    return out


# --------------------------------------------------------------------------
# The package
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC)


def test_graph_sees_the_package(graph):
    # guards against a walker that silently finds nothing
    assert "fastsyn.bench.datasets" in graph
    assert "fastsyn._kernels.cc" in graph
    assert any(under(t, ("fastsyn._kernels",)) for t in graph["fastsyn.fields"])
    assert "fastsyn.bench.layout" in graph["fastsyn.bench.convert"]


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_layers_import_downwards(graph):
    assert layer_violations(graph) == []


# --------------------------------------------------------------------------
# The checker itself
# --------------------------------------------------------------------------


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, None),  # diamond
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a"}}, ["a", "a"]),
    ({"x": {"a"}, "a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),  # circle off the start
    ({"a": {"z"}}, None),  # edge to a node with no entry
])
def test_find_cycle(graph, expected):
    assert find_cycle(graph) == expected


def test_layer_rules_catch_violations():
    bad = {
        "fastsyn._kernels.cc": {"fastsyn._threads"},
        "fastsyn.fields": {"fastsyn._threads"},
        "fastsyn._threads": {"fastsyn.bench.run"},
        "fastsyn.metrics.mi": {"fastsyn.cli"},
        "fastsyn.bench.run": {"fastsyn._kernels.warp"},
        "fastsyn.bench.store": set(),
    }
    found = "\n".join(layer_violations(bad))
    assert "fastsyn._kernels.cc imports fastsyn._threads" in found
    assert "fastsyn.fields reaches fastsyn.bench.run via fastsyn.fields -> fastsyn._threads" in found
    assert "fastsyn.metrics.mi reaches fastsyn.cli" in found
    assert "fastsyn.bench.run imports fastsyn._kernels.warp directly" in found
    assert "fastsyn.bench.store" not in found


def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_walker_finds_a_circle_through_a_function_level_import(tmp_path):
    _write(tmp_path, "fastsyn/__init__.py", "")
    _write(tmp_path, "fastsyn/bench/__init__.py", "")
    _write(tmp_path, "fastsyn/bench/a.py", "from .b import thing\n")
    _write(tmp_path, "fastsyn/bench/b.py",
           "def thing():\n    from . import a\n    return a\n")
    _write(tmp_path, "fastsyn/bench/c.py",
           "import importlib\n\ndef f():\n    return importlib.import_module('fastsyn.cli')\n")
    _write(tmp_path, "fastsyn/cli.py", "from .bench import c\n")
    _write(tmp_path, "fastsyn/_kernels/k.pyx", "from fastsyn._kernels._x cimport f\nimport os\n")
    _write(tmp_path, "fastsyn/_kernels/_x.pxd", "from fastsyn.fields import y\n")
    g = import_graph(tmp_path)
    assert g["fastsyn.bench.a"] == {"fastsyn.bench.b"}
    assert g["fastsyn.bench.b"] == {"fastsyn.bench.a"}
    assert g["fastsyn.cli"] == {"fastsyn.bench.c"}
    assert g["fastsyn.bench.c"] == {"fastsyn.cli"}
    assert g["fastsyn._kernels.k"] == {"fastsyn._kernels._x"}
    assert find_cycle(g) in (["fastsyn.bench.a", "fastsyn.bench.b", "fastsyn.bench.a"],
                             ["fastsyn.bench.c", "fastsyn.cli", "fastsyn.bench.c"])
    assert layer_violations(g) == [
        "fastsyn._kernels._x imports fastsyn.fields",
        "fastsyn.bench.c reaches fastsyn.cli via fastsyn.bench.c -> fastsyn.cli",
    ]


def test_relative_imports_resolve_against_the_package(tmp_path):
    _write(tmp_path, "fastsyn/__init__.py", "from . import fields\nfrom .fields import f\n")
    _write(tmp_path, "fastsyn/fields.py", "")
    _write(tmp_path, "fastsyn/metrics/__init__.py", "from .mi import M\nfrom .. import fields\n")
    _write(tmp_path, "fastsyn/metrics/mi.py", "from ..fields import f\nfrom . import M\n")
    g = import_graph(tmp_path)
    assert g["fastsyn"] == {"fastsyn.fields"}
    assert g["fastsyn.metrics"] == {"fastsyn.metrics.mi", "fastsyn.fields"}
    assert g["fastsyn.metrics.mi"] == {"fastsyn.fields", "fastsyn.metrics"}
    assert find_cycle(g) == ["fastsyn.metrics", "fastsyn.metrics.mi", "fastsyn.metrics"]


# --------------------------------------------------------------------------
# House rule: functions of at most 100 lines
# --------------------------------------------------------------------------

MAX_FUNCTION_LINES = 100


def long_functions(src, package=PACKAGE, limit=MAX_FUNCTION_LINES):
    """``module.function (n lines)`` for every Python function longer than ``limit``."""
    found = []
    for name, (path, _) in discover(src, package).items():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{name}.{node.name} ({lines} lines)")
    return found


def test_no_python_function_exceeds_the_house_limit():
    assert long_functions(SRC) == []


def test_long_function_check_sees_a_long_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    _write(tmp_path, "fastsyn/__init__.py", "")
    _write(tmp_path, "fastsyn/m.py", "def short():\n    return 1\n\n\ndef long():\n" + body)
    assert long_functions(tmp_path) == [f"fastsyn.m.long ({MAX_FUNCTION_LINES + 1} lines)"]
