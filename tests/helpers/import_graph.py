"""The package-level import graph of lorabatch, every import included (function-local ones too).

    python -m tests.helpers.import_graph [lorabatch]

prints the strongly connected sets of subpackages (import cycles), the edges that run against the
layer order of `pyproject.toml` ([tool.importlinter]), and the function-local imports of the
project's own modules. A node is a subpackage (`lorabatch.bank`) or a top-level module
(`lorabatch.layout`); an edge a → b means some file of a imports something of b.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _enclosing_function(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
    return False


def file_imports(path: Path, module: str) -> list[tuple[str, bool, int]]:
    """(imported module or module.name, inside a function, line) for every import of a file."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, _enclosing_function(node, parents), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (path.name == "__init__.py")]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            local = _enclosing_function(node, parents)
            out.append((target, local, node.lineno))
            out += [(f"{target}.{alias.name}", local, node.lineno) for alias in node.names]
    return out


def node_of(module: str, top: str) -> str | None:
    """The graph node of a module of package `top`: its first component below `top`."""
    parts = module.split(".")
    if parts[0] != top or len(parts) < 2:
        return None
    return parts[1]


def package_graph(package_dir: Path) -> tuple[dict[str, set[str]], int, list[tuple[str, str, str]]]:
    """({node: nodes it imports}, number of function-local import statements of own modules,
    [(node, imported node, file:line)] for every import statement between two nodes)."""
    top = package_dir.name
    files = sorted(package_dir.rglob("*.py"))
    known = {module_name(f, package_dir) for f in files}
    edges: dict[str, set[str]] = defaultdict(set)
    local_imports = 0
    statements_between: list[tuple[str, str, str]] = []
    for f in files:
        module = module_name(f, package_dir)
        src = node_of(module, top)
        if src is None:
            continue
        edges.setdefault(src, set())
        statements = set()
        for target, local, line in file_imports(f, module):
            dst = node_of(target, top)
            if target not in known or dst is None:
                continue
            if dst != src:
                edges[src].add(dst)
                where = f"{f.relative_to(package_dir.parent)}:{line}"
                if (src, dst, where) not in statements_between:
                    statements_between.append((src, dst, where))
        tree = ast.parse(f.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            own = (isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == top)) or (
                isinstance(node, ast.Import) and any(a.name.split(".")[0] == top for a in node.names)
            )
            if own and _enclosing_function(node, parents):
                statements.add(node.lineno)
        local_imports += len(statements)
    return dict(edges), local_imports, statements_between


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted; a cycle is a component of size > 1."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
            out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer_rank(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, int]:
    """{node: its layer's position, 0 at the top} from the layers contract of `pyproject.toml`."""
    config = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    rank = {}
    for i, layer in enumerate(layers):
        for name in layer.replace("|", ":").split(":"):
            rank[name.strip()] = i
    return rank


def upward_edges(edges: dict[str, set[str]], rank: dict[str, int]) -> list[tuple[str, str]]:
    """Edges a → b where b sits in a higher layer than a (both placed in the layer order)."""
    return sorted((a, b) for a, bs in edges.items() for b in bs if a in rank and b in rank and rank[b] < rank[a])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", type=Path, default=ROOT / "lorabatch")
    parser.add_argument("--layers-from", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args(argv)
    edges, local_imports, between = package_graph(args.package.resolve())
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    rank = layer_rank(args.layers_from)
    upward = upward_edges(edges, rank)
    upward_statements = [(a, b, where) for a, b, where in between if (a, b) in set(upward)]
    print(f"nodes {len(edges)}, edges {sum(len(v) for v in edges.values())}")
    print(f"cycles (strongly connected sets of more than one node): {len(cycles)}")
    for c in cycles:
        print("  " + ", ".join(c))
    print(f"edges against the layer order: {len(upward)}")
    for a, b in upward:
        print(f"  {a} -> {b}")
    print(f"import statements along them: {len(upward_statements)}")
    for a, b, where in upward_statements:
        print(f"  {where}: {a} -> {b}")
    print(f"function-local imports of the package's own modules: {local_imports}")


if __name__ == "__main__":
    sys.exit(main())
