"""The package's layout, read from its source (issue 19): the import graph and the sizes.

* the import graph has no cycle: every import statement of src/paramcorrupt, function-level
  ones included (a lazy import hides a cycle, it does not remove it), and every
  ``importlib.import_module`` call whose argument names a module (a string, or an f-string
  of ``__name__`` and text, as in ``import_module(f"{__name__}.train")``; a name only known at
  run time, such as a user's module or ``f"{__name__}.{name}"``, is no edge);
* the core (:data:`CORE`) imports nothing outside the core;
* no package imports one that sits above it (:data:`FLOORS`, lowest first);
* no private name (``_x``) is imported from another package (a package is a folder of
  src/paramcorrupt, with its subfolders; the root modules are one package);
* no module is over 500 lines, and no function over 100 lines unless a comment says why: on
  the line before its ``def`` (or its first decorator) or as the first line of its body
  (after the docstring, if any).

Each check prints what breaks it; each checker is also shown to find a planted violation, so
that none of them can pass because it found nothing to look at.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1] / "src" / "paramcorrupt"

#: the core: the root modules, the groups, corruption and formats packages, and of parallel
#: only the lazy package file and ``comm`` (the root's ``__main__`` runs the CLI: it is no
#: core module)
CORE_PACKAGES = ("paramcorrupt.groups", "paramcorrupt.corruption", "paramcorrupt.formats")
CORE_MODULES = ("paramcorrupt.parallel", "paramcorrupt.parallel.comm")
#: the floors, lowest first: a module may import its own floor and those below it
FLOORS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("parallel",),
    ("models", "data"),
    ("train",),
    ("tasks",),
    ("faults",),
    ("probe",),
    ("experiments",),
    ("cli", "__main__"),
)
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100


class Source(NamedTuple):
    text: str
    package: bool  # an ``__init__.py``


class Import(NamedTuple):
    importer: str
    target: str  # the module imported, or the one a from-import takes a name from
    source: str = ""  # a from-import's module (``from source import taken``)
    taken: str = ""  # the name a from-import takes (a name of ``source``, or its submodule)


def read_sources(root: Path = ROOT) -> dict[str, Source]:
    """Every module under ``root``, by dotted name (a package by its own name)."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        sources[".".join(parts[:-1] if package else parts)] = Source(path.read_text(), package)
    return sources


def _constant_module(node: ast.expr, here: str) -> str | None:
    """The module an ``import_module`` argument names, or None when only known at run time."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        text = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                text.append(str(value.value))
            elif isinstance(value.value, ast.Name) and value.value.id == "__name__":
                text.append(here)
            else:
                return None
        return "".join(text)
    return None


def imports(sources: dict[str, Source]) -> list[Import]:
    """Every import of a module of ``sources`` by another one."""
    found = []
    for name, (text, package) in sources.items():
        here = name if package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    # "from pkg import sub" imports pkg.sub; "from pkg import name", pkg's name
                    sub = f"{target}.{alias.name}"
                    found.append(Import(name, sub if sub in sources else target, target, alias.name))
            elif isinstance(node, ast.Import):
                found.extend(Import(name, alias.name) for alias in node.names)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
            ):
                target = _constant_module(node.args[0], name)
                if target is not None:
                    found.append(Import(name, target))
    return [i for i in found if i.target in sources and i.target != i.importer]


def import_graph(sources: dict[str, Source] | None = None) -> dict[str, set[str]]:
    sources = read_sources() if sources is None else sources
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for edge in imports(sources):
        graph[edge.importer].add(edge.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def package_of(module: str) -> str:
    """The package a module belongs to: its top folder under paramcorrupt (the root: "")."""
    parts = module.split(".")
    if len(parts) == 2 and not (ROOT / parts[1]).is_dir():
        return ""  # a root module
    return parts[1] if len(parts) > 1 else ""


def is_core(module: str) -> bool:
    return (
        (package_of(module) == "" and module != "paramcorrupt.__main__")
        or module in CORE_MODULES
        or any(module == p or module.startswith(p + ".") for p in CORE_PACKAGES)
    )


def floor_of(module: str) -> int | None:
    """The floor of a module (an index of :data:`FLOORS`), or None when no floor names it."""
    if is_core(module):
        return 0
    name = "__main__" if module == "paramcorrupt.__main__" else package_of(module)
    return next((i for i, names in enumerate(FLOORS) if name in names), None)


def core_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for each import of a module outside the core by a core module."""
    return [f"{a} -> {b}" for a in sorted(graph) if is_core(a) for b in sorted(graph[a]) if not is_core(b)]


def floor_violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module on a higher floor, and each module on no floor."""
    bad = [f"{m}: on no floor (add its package to FLOORS)" for m in sorted(graph) if floor_of(m) is None]
    for a in sorted(graph):
        for b in sorted(graph[a]):
            fa, fb = floor_of(a), floor_of(b)
            if fa is not None and fb is not None and fb > fa:
                bad.append(f"{a} (floor {fa}: {'/'.join(FLOORS[fa])}) -> {b} (floor {fb}: {'/'.join(FLOORS[fb])})")
    return bad


def private_imports(sources: dict[str, Source]) -> list[str]:
    """``importer: from module import _name`` for each private name taken across packages
    (a module taken by name counts: ``from pkg import _module``)."""
    return [
        f"{i.importer}: from {i.source} import {i.taken}"
        for i in imports(sources)
        if i.taken and i.taken.startswith("_") and not i.taken.startswith("__")
        and package_of(i.importer) != package_of(i.target)
    ]


def long_modules(sources: dict[str, Source], limit: int = MAX_MODULE_LINES) -> list[str]:
    """``module: N lines`` for each module over ``limit`` lines."""
    sizes = {name: len(src.text.splitlines()) for name, src in sources.items()}
    return [f"{name}: {n} lines" for name, n in sorted(sizes.items()) if n > limit]


def _is_comment(line: str) -> bool:
    return line.strip().startswith("#")


def long_functions(sources: dict[str, Source], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``module.function: N lines`` for each function over ``limit`` lines with no comment
    saying why (on the line before its def or first decorator, or first in its body)."""
    bad = []
    for name, src in sorted(sources.items()):
        lines = src.text.splitlines()
        for node in ast.walk(ast.parse(src.text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            size = node.end_lineno - node.lineno + 1
            if size <= limit:
                continue
            top = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            body = node.body
            docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)
            # the lines from the def (or the docstring) to the first statement: what follows
            # their last line of code (the signature's, or the docstring's) opens the body
            start = body[0].end_lineno if docstring and len(body) > 1 else node.lineno
            end = body[1].lineno if docstring and len(body) > 1 else body[0].lineno
            region = lines[start - 1 : end - 1]
            code = [i for i, line in enumerate(region) if line.strip() and not _is_comment(line)]
            first = [line for line in region[code[-1] + 1 if code else 0 :] if line.strip()][:1]
            before = lines[top - 2] if top >= 2 else ""
            if not (_is_comment(before) or any(_is_comment(line) for line in first)):
                bad.append(f"{name}.{node.name} (line {node.lineno}): {size} lines")
    return bad


def report(title: str, found: list[str]) -> str:
    text = f"{title} ({len(found)}):\n  " + "\n  ".join(found)
    if found:
        print(text)
    return text


# -- the package ----------------------------------------------------------------------------


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "paramcorrupt.faults.base" in graph and graph["paramcorrupt.corruption.iterative"] >= {"paramcorrupt.corruption.apply"}
    found = cycles(graph)
    assert found == [], report("import cycles", [" -> ".join(c) for c in found])


def test_the_core_imports_only_the_core():
    graph = import_graph()
    assert is_core("paramcorrupt.constraint") and is_core("paramcorrupt.corruption.random")
    assert is_core("paramcorrupt.parallel.comm") and not is_core("paramcorrupt.parallel.launch")
    assert is_core("paramcorrupt.formats.numbers") and not is_core("paramcorrupt.faults.bits")
    found = core_violations(graph)
    assert found == [], report("core modules importing outside the core", found)


def test_no_package_imports_one_above_it():
    found = floor_violations(import_graph())
    assert found == [], report("imports of a higher floor", found)


def test_no_private_name_is_imported_across_packages():
    found = private_imports(read_sources())
    assert found == [], report("private names imported across packages", found)


def test_no_module_is_over_500_lines():
    found = long_modules(read_sources())
    assert found == [], report(f"modules over {MAX_MODULE_LINES} lines", found)


def test_no_function_is_over_100_lines_without_a_comment_saying_why():
    found = long_functions(read_sources())
    assert found == [], report(f"functions over {MAX_FUNCTION_LINES} lines with no comment saying why", found)


# -- the checkers find what is planted ------------------------------------------------------


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def planted(**modules: str) -> dict[str, Source]:
    """Sources by dotted name: ``pkg__init`` for ``pkg/__init__.py``, ``a__b`` for ``a/b.py``."""
    sources = {}
    for key, text in modules.items():
        package = key.endswith("__init")
        name = key.removesuffix("__init").rstrip("_").replace("__", ".")
        sources["paramcorrupt" + ("." + name if name else "")] = Source(text, package)
    return sources


def test_the_graph_reads_relative_lazy_and_import_module_edges():
    sources = planted(
        __init="import importlib\ndef f(n):\n    importlib.import_module(f'{__name__}.train')\n"
        "    importlib.import_module(f'{__name__}.{n}')\n",
        losses="def f():\n    from .tasks import base\n",
        tasks__init="from ..losses import f\n",
        tasks__base="import paramcorrupt.losses\n",
        train__init="",
    )
    assert import_graph(sources) == {
        "paramcorrupt": {"paramcorrupt.train"},  # the run-time name is no edge
        "paramcorrupt.losses": {"paramcorrupt.tasks.base"},
        "paramcorrupt.tasks": {"paramcorrupt.losses"},
        "paramcorrupt.tasks.base": {"paramcorrupt.losses"},
        "paramcorrupt.train": set(),
    }


def test_the_core_check_finds_an_import_outside_the_core():
    graph = {
        "paramcorrupt.losses": {"paramcorrupt.tasks.base", "paramcorrupt.constraint"},
        "paramcorrupt.corruption.random": {"paramcorrupt.parallel.comm", "paramcorrupt.parallel.data"},
        "paramcorrupt.parallel": set(),
        "paramcorrupt.tasks.base": {"paramcorrupt.losses"},
    }
    assert core_violations(graph) == [
        "paramcorrupt.corruption.random -> paramcorrupt.parallel.data",
        "paramcorrupt.losses -> paramcorrupt.tasks.base",
    ]


def test_the_floor_check_finds_an_upward_import_and_an_unplaced_package():
    graph = {
        "paramcorrupt.train.loop": {"paramcorrupt.tasks.base", "paramcorrupt.models.resnet", "paramcorrupt.losses"},
        "paramcorrupt.models.resnet": {"paramcorrupt.data.cifar10"},  # the same floor
        "paramcorrupt.data.cifar10": set(),
        "paramcorrupt.tasks.base": {"paramcorrupt.train.loop"},
        "paramcorrupt.losses": set(),
        "paramcorrupt.nowhere.x": set(),
    }
    found = floor_violations(graph)
    assert found[0].startswith("paramcorrupt.nowhere.x: on no floor")
    assert found[1:] == ["paramcorrupt.train.loop (floor 3: train) -> paramcorrupt.tasks.base (floor 4: tasks)"]


def test_the_private_check_finds_a_private_name_from_another_package():
    sources = planted(
        _state="def _keep(): ...\n",
        losses="from ._state import _keep\n",  # the same package: allowed
        tasks__init="",
        tasks___options="def _opt(): ...\n",
        tasks__base="from ._options import _opt\nfrom .._state import _keep\n",
        cli__init="from ..tasks._options import _opt as o\nfrom ..tasks import _options\nimport paramcorrupt._state\n",
    )
    assert private_imports(sources) == [
        "paramcorrupt.tasks.base: from paramcorrupt._state import _keep",
        "paramcorrupt.cli: from paramcorrupt.tasks._options import _opt",
        "paramcorrupt.cli: from paramcorrupt.tasks import _options",
    ]


def test_the_size_checks_find_a_long_module_and_an_unexplained_long_function():
    def function(name: str, before: str = "", first: str = "", doc: bool = False) -> str:
        body = ['    """Doc."""'] * doc + ([f"    {first}"] if first else []) + ["    x = 1"] * 101
        return "\n".join([before, "@decorator", f"def {name}(", "    a,", "):", *body, ""])

    sources = {
        "paramcorrupt.a": Source(function("bare") + function("above", before="# long: a table") + function("inside", first="# long: a table"), False),
        "paramcorrupt.b": Source(function("after_doc", first="# why", doc=True) + function("doc_only", doc=True), False),
        "paramcorrupt.c": Source("x = 1\n" * 501, False),
        "paramcorrupt.d": Source("x = 1\n" * 500, False),
    }
    assert long_modules(sources) == ["paramcorrupt.c: 501 lines"]
    assert long_functions(sources) == ["paramcorrupt.a.bare (line 3): 104 lines", "paramcorrupt.b.doc_only (line 111): 105 lines"]
