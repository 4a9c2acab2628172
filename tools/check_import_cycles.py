#!/usr/bin/env python3
"""Fails on an import cycle inside the given packages (default: pyfusedbn and benchmarks).

    python tools/check_import_cycles.py [--root DIR] [PACKAGE ...]

Reads every .py file under each package folder with `ast` (nothing is imported or run) and takes
every import, at module level or inside a function, absolute or relative, that names a module of
one of those packages. `from pkg import name` counts as an import of pkg.name when that is a
module, else of pkg. A module also imports its parent packages (Python runs their __init__
first), so those edges are added too, except a package's edge to its own submodules' parent
chain, which would make every package a cycle. Prints each cycle (one strongly connected
component, with one closed path through it) and exits 1; with none, prints a one-line summary and
exits 0.
"""
import argparse
import ast
import os
import sys
from typing import Dict, List, Optional, Set

DEFAULT_PACKAGES = ("pyfusedbn", "benchmarks")


def module_files(root: str, packages) -> Dict[str, str]:
    """{dotted module name: path} of every .py file under root/<package>."""
    modules = {}
    for package in packages:
        top = os.path.join(root, package)
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            parts = os.path.relpath(folder, root).split(os.sep)
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                stem = name[:-3]
                dotted = ".".join(parts if stem == "__init__" else parts + [stem])
                modules[dotted] = os.path.join(folder, name)
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, target: Optional[str]) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def bound_names(tree: ast.Module) -> Set[str]:
    """The names a module binds at its top level (assignments, defs, classes, imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def imports_of(module: str, path: str, known: Set[str],
               package_names: Dict[str, Set[str]]) -> Set[str]:
    """The modules of `known` that `module` (at `path`) imports, anywhere in the file.
    package_names: the names each package's __init__ binds; `from pkg import name` of a name it
    does not bind and no .py file holds is a compiled submodule (pkg/_C.so): no edge."""
    tree = _parse(path)
    is_package = os.path.basename(path) == "__init__.py"
    found = set()

    def add(name: str) -> None:
        # The longest known prefix: `import a.b.c` with a.b.c a function still imports a.b.
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in known:
                found.add(candidate)
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = (_resolve_relative(module, is_package, node.level, node.module)
                      if node.level else node.module)
            if not source:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:
                    add(submodule)
                elif source not in package_names or alias.name in package_names[source]:
                    add(source)
    found.discard(module)
    return found


def build_graph(root: str, packages) -> Dict[str, Set[str]]:
    files = module_files(root, packages)
    known = set(files)
    package_names = {module: bound_names(_parse(path)) for module, path in files.items()
                     if os.path.basename(path) == "__init__.py"}
    graph = {}
    for module, path in files.items():
        edges = imports_of(module, path, known, package_names)
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: edges to each parent package,
        # except to packages that contain this module (they are being imported already).
        for target in list(edges):
            parts = target.split(".")
            for end in range(1, len(parts)):
                parent = ".".join(parts[:end])
                if parent in known and not (module + ".").startswith(parent + "."):
                    edges.add(parent)
        graph[module] = edges
    return graph


def strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's algorithm (iterative); components of more than one module, or with a self-edge."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
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
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(sorted(component))
    return components


def closed_path(graph: Dict[str, Set[str]], component: List[str]) -> List[str]:
    """A shortest cycle through the component's first module (breadth-first within it)."""
    members, start = set(component), component[0]
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return list(reversed(path)) + [start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", default=list(DEFAULT_PACKAGES))
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="folder holding the packages (default: the repository root)")
    args = parser.parse_args(argv)
    missing = [p for p in args.packages if not os.path.isdir(os.path.join(args.root, p))]
    if missing:
        parser.error(f"no package folder {', '.join(missing)} under {args.root}")
    graph = build_graph(args.root, args.packages)
    cycles = strongly_connected(graph)
    for component in cycles:
        print(f"import cycle among {len(component)} modules: {', '.join(component)}")
        print("  " + " -> ".join(closed_path(graph, component)))
    if cycles:
        return 1
    edges = sum(len(targets) for targets in graph.values())
    print(f"no import cycles: {len(graph)} modules, {edges} imports inside "
          f"{', '.join(args.packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
