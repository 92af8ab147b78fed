"""Module boundaries of the package, read from the source with ``ast``: no import cycle (imports at any depth,
the package ``__init__`` files included) and no private name of one module used by another."""
import ast
from pathlib import Path

import ssl_cluster_bench

PACKAGE = Path(ssl_cluster_bench.__file__).parent
NAME = PACKAGE.name


def _modules() -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only: never imported at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(name: str, path: Path, is_package: bool, modules, bound=None) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for each import of the package's own modules in ``path``;
    ``bound`` (a dict, if given) receives the local names bound to modules of the package (``from . import api``).

    ``from . import x`` where x is a submodule imports x (the package ``__init__`` only as its parent, which
    every submodule has); ``from . import y`` where y is an attribute of the package imports the ``__init__``.
    """
    base = name.split(".") if is_package else name.split(".")[:-1]
    bound = {} if bound is None else bound
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            module = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            if module not in modules:
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.append((sub, [], node.lineno) if sub in modules else (module, [alias.name], node.lineno))
                if sub in modules:
                    bound[alias.asname or alias.name] = sub
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {target for target, _, _ in _imports(name, path, is_package, modules) if target != name}
            for name, (path, is_package) in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected group of modules (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
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
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # a shortest way back to the start, for a readable message
        start = min(group)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = sorted(graph[path[-1]] & group)
            if start in nxt:
                cycles.append(path + [start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
    return cycles


def test_the_cycle_finder_finds_cycles_through_functions_and_the_package_init(tmp_path):
    # the graph builder on a made-up package: a lazy import inside a function and `from . import __version__`
    # both count, `from . import submodule` does not make the package __init__ a dependency
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p"}, "p.c": set()}
    assert _cycles(graph) == [["p", "p.a", "p.b", "p"]]
    source = "def f():\n    from . import __version__\n    from .b import g\nfrom . import c\n"
    modules = {"p": (None, True), "p.a": (None, False), "p.b": (None, False), "p.c": (None, False)}
    (tmp_path / "a.py").write_text(source)
    found = _imports("p.a", tmp_path / "a.py", False, modules)
    assert sorted((m, names) for m, names, _ in found) == [("p", ["__version__"]), ("p.b", ["g"]), ("p.c", [])]


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (imports inside functions and package __init__ files count): " + "; ".join(
        " -> ".join(c) for c in cycles)


def test_no_private_name_crosses_modules():
    """``from .x import _name`` and ``x._name`` on an imported module of the package: a helper another module
    needs is public in the module it belongs to."""
    modules = _modules()
    crossings = []
    for name, (path, is_package) in modules.items():
        bound: dict[str, str] = {}
        for target, names, line in _imports(name, path, is_package, modules, bound):
            crossings += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                crossings.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses {bound[node.value.id]}."
                                 f"{node.attr}")
    assert not crossings, "private names used across modules: " + "; ".join(crossings)
