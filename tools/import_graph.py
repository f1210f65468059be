"""The import graph of the xbar package, read with ast: cycles, imports of the CLI from the library,
and private names imported across modules.

    python tools/import_graph.py          # prints what it finds; exit status 1 when anything is
    python tools/import_graph.py --cli    #   ... also lists who imports xbar.cli

Every import counts: module-level ones and those inside functions (a cycle held apart by an
import inside a function is still a cycle).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "xbar"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted((root / PKG).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level:
        base = base[:len(base) - (level - 1)]
        return ".".join(base + ([name] if name else []))
    return name or ""


def imports(root: Path = ROOT) -> list[tuple[str, str, str | None, int]]:
    """(importer, imported module, imported name or None, line) for every import of the package."""
    mods = modules(root)
    out = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == PKG:
                        out.append((mod, a.name, None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node.level, node.module)
                if target.split(".")[0] != PKG:
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in mods:          # `from . import cost`: the module itself
                        out.append((mod, sub, None, node.lineno))
                    else:
                        out.append((mod, target, a.name, node.lineno))
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports. Importing a.b.c runs a and a.b first, but those
    edges are the interpreter's, not the code's: only the named module counts."""
    mods = modules(root)
    g: dict[str, set[str]] = {m: set() for m in mods}
    for src, dst, _, _ in imports(root):
        while dst not in mods and "." in dst:
            dst = dst.rsplit(".", 1)[0]
        if dst in mods and dst != src:
            g[src].add(dst)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def cli_imports(root: Path = ROOT) -> list[str]:
    """'module:line' of every import of xbar.cli from outside xbar.cli."""
    return [f"{src}:{line}" for src, dst, _, line in imports(root)
            if (dst == "xbar.cli" or dst.startswith("xbar.cli.")) and not (src == "xbar.cli" or
                                                                          src.startswith("xbar.cli."))]


def private_imports(root: Path = ROOT) -> list[str]:
    """'module:line name' of every private name (_x, not __x__) imported from another module."""
    out = []
    for src, dst, name, line in imports(root):
        if name is None or dst == src:
            continue
        if name.startswith("_") and not name.startswith("__"):
            out.append(f"{src}:{line} {dst}.{name}")
    return out


def main() -> int:
    g = graph()
    found = cycles(g)
    cli = cli_imports()
    private = private_imports()
    print(f"{len(g)} modules, {sum(map(len, g.values()))} import edges (module-level and in functions)")
    print(f"cycles: {len(found)}")
    for c in found:
        print("  " + " <-> ".join(c))
    print(f"imports of xbar.cli from the library: {len(cli)}")
    for x in cli:
        print("  " + x)
    print(f"private names imported across modules: {len(private)}")
    for x in private:
        print("  " + x)
    return 1 if found or cli or private else 0


if __name__ == "__main__":
    sys.exit(main())
