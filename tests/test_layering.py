"""The house's floors: every import between the project's packages points down, none crosses a floor sideways,
none loops, and no private name (`_x`) crosses a package. Imports inside functions count like any other: one
hidden in a function to dodge a loop is still a loop. docs/architecture.md draws these floors."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# top floor first; packages on one floor do not import each other
FLOORS = (
    ("curate",),                          # the CLI, the config, the Ray driver, the report, file lists, downloads
    ("stages", "training", "lipsync"),    # the work: curation steps, trainers, inference
    ("networks",),                        # every torch network, pure torch
    ("faces",),                           # landmarks, tracking, alignment
    ("media",),                           # PyAV / OpenCV: probe, the 25 fps timeline, mel
    ("manifests",),                       # schema, Parquet, journal, hashing, settings base, Rejected
)
# what a network file may import besides the standard library and `networks` itself
NETWORK_LIBRARIES = {"torch", "diffusers", "einops", "safetensors", "numpy", "PIL"}


def floor_of(package: str) -> int:
    return next(level for level, names in enumerate(FLOORS) if package in names)


def packages(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file() and p.name not in ("tests", "bench"))


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path) -> list[tuple[int, str, str | None, ast.AST]]:
    """(line, module, imported name or None, node) for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(root, path)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module, alias.name, node) for alias in node.names]
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(root: Path) -> list[str]:
    """Every breach of the floors in the project at `root`, one line each (path:line and what)."""
    names = packages(root)
    problems = [f"{name}: a package on no floor (add it to FLOORS)" for name in names
                if not any(name in floor for floor in FLOORS)]
    if problems:
        return problems
    edges: dict[tuple[str, str], str] = {}
    for package in names:
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root).as_posix()
            tree_aliases: dict[str, str] = {}   # local name -> module of another package, for `alias._private`
            for line, module, name, node in imports_of(root, path):
                top = module.split(".")[0]
                if package == "networks" and top not in names and top not in sys.stdlib_module_names \
                        and top not in NETWORK_LIBRARIES:
                    problems.append(f"{where}:{line}: a network imports {module} (pure torch only)")
                if top not in names or top == package:
                    continue
                edges.setdefault((package, top), f"{where}:{line}")
                if floor_of(top) <= floor_of(package):
                    what = "a sideways" if floor_of(top) == floor_of(package) else "an upward"
                    problems.append(f"{where}:{line}: {what} import of {module} from {package}")
                dotted = module + (f".{name}" if name else "")
                if any(is_private(part) for part in dotted.split(".")):
                    problems.append(f"{where}:{line}: the private name {dotted} crosses into {package}")
                alias = next(a for a in node.names if a.name == (name or module))
                local = alias.asname or (name if name else module.split(".")[0])
                tree_aliases[local] = dotted if name else module.split(".")[0]
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id in tree_aliases and is_private(node.attr):
                    problems.append(f"{where}:{node.lineno}: the private name {tree_aliases[node.value.id]}."
                                    f"{node.attr} crosses into {package}")
    problems += [f"a loop between packages: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return problems


def cycles(edges: dict[tuple[str, str], str]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    found.append(path + [start])
                elif nxt not in path and nxt > start:   # each loop once, from its smallest package
                    stack.append((nxt, path + [nxt]))
    return found


def test_every_import_between_packages_points_down_and_no_private_name_crosses():
    assert violations(ROOT) == []


def test_the_check_catches_an_upward_import_a_loop_a_private_name_and_an_impure_network(tmp_path):
    """The check itself, on a small tree that breaks each rule once (imports inside functions included)."""
    def write(relative: str, text: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    for package in ("curate", "stages", "training", "networks", "media", "manifests"):
        write(f"{package}/__init__.py", "")
    write("media/probe.py", "def f():\n    from stages import face\n")          # upward, inside a function
    write("stages/face.py", "from media import probe\nprobe._text(1)\n")          # private attribute
    write("stages/sync.py", "from training.loop import fit\n")                   # sideways
    write("training/loop.py", "from manifests.io import _rows\n")                 # private name
    write("networks/unet.py", "import av\nimport torch\n")                        # impure network
    found = "\n".join(violations(tmp_path))
    assert "media/probe.py:2: an upward import of stages" in found
    assert "stages/face.py:2: the private name media.probe._text crosses into stages" in found
    assert "stages/sync.py:1: a sideways import of training.loop from stages" in found
    assert "training/loop.py:1: the private name manifests.io._rows crosses into training" in found
    assert "networks/unet.py:1: a network imports av" in found
    assert "a loop between packages: media -> stages -> media" in found

    write("extras/__init__.py", "")
    assert violations(tmp_path) == ["extras: a package on no floor (add it to FLOORS)"]
