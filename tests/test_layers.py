"""The layer contract: imports point one way, and no module imports itself back through others.

Read from the source (every import statement, those inside functions too), so an upward or
circular import fails here before it can half-initialise a package at run time.
"""
import ast
from pathlib import Path

import mambakit

PACKAGE = Path(mambakit.__file__).parent

# Lowest first. A module may import from its own layer (cycles are checked apart) or any below.
LAYERS = [
    ("checks", "threads", "io"),            # leaf helpers: argument checks, thread setup, atomic writes, safe reads
    ("config",),                            # every family's config
    ("ops",),                               # pure tensor functions
    ("modules",),                           # nn.Module layers
    ("formats", "generation"),              # checkpoint/state files; decoding driven through the model surface
    ("models",),                            # language models and their registry
    ("state", "data", "perf", "plots", "train", "tasks", "serve", "demo"),
    ("",),                                  # mambakit/__init__.py: the public names
    ("cli",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = ["mambakit", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The mambakit modules `name` imports (`from pkg import sub` counts as importing pkg.sub)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mambakit"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "mambakit":
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs or {node.module}
            found |= {node.module} if len(subs) < len(node.names) else set()
    return found - {name}


def layer(name: str) -> int:
    first = name.split(".")[1] if "." in name else ""
    assert first in RANK, f"{name} belongs to no layer: add mambakit.{first} to LAYERS in {__file__}"
    return RANK[first]


def test_every_import_points_down():
    upward = [f"{a} imports {b}" for a in sorted(MODULES) for b in sorted(imports(a))
              if b in MODULES and layer(b) > layer(a)]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {name: imports(name) & MODULES.keys() for name in MODULES}
    done, path, cycles = set(), [], []

    def visit(node):
        if node in path:
            cycles.append(" -> ".join(path[path.index(node):] + [node]))
            return
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        path.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
