"""The package's layout as the README's "How it is built" map tells it, and its import graph.

* Every module and data folder under ``dce_batch/`` is named in the map, under its package.
* Module-level imports inside the package form no cycle; with the imports inside functions too,
  the packages form no cycle (``KNOWN_PACKAGE_CYCLES`` names any allowed one).
* Ray is imported only where the README says.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dce_batch"
README = REPO / "README.md"

# Package pairs allowed to import each other (none: the report reads job.manifest, and the CLI,
# not the job's driver, builds the report after a run).
KNOWN_PACKAGE_CYCLES: set[tuple[str, str]] = set()


# -- the README's map --------------------------------------------------------------------------


@dataclass
class Entry:
    """A line of the map that names a folder (``job/``) or a file (``cli.py``), with its text."""

    name: str
    indent: int
    text: list[str] = field(default_factory=list)
    children: dict[str, Entry] = field(default_factory=dict)


def readme_map() -> Entry:
    text = README.read_text()
    section = text[text.index("## How it is built"):]
    block = section.split("```", 2)[1].strip("\n").splitlines()
    root = Entry(name="", indent=-1)
    stack = [root]
    for line in block:
        indent = len(line) - len(line.lstrip())
        token = line.split()[0]
        while stack[-1].indent >= indent:
            stack.pop()
        if token.endswith(("/", ".py")):
            entry = Entry(name=token, indent=indent, text=[line])
            stack[-1].children[token] = entry
            stack.append(entry)
        else:
            stack[-1].text.append(line)
    return root


def _named(entry: Entry, word: str) -> bool:
    """``word`` (a module's stem) in the folder's own lines, or in a file entry of that folder."""
    lines = entry.text + [line for child in entry.children.values() if child.name.endswith(".py")
                          for line in child.text]
    pattern = re.compile(rf"(?<![\w.]){re.escape(word)}(\.py)?(?![\w])")
    return any(pattern.search(line) for line in lines)


def _missing_from_map(root: Entry, relative: Path) -> str | None:
    """Why ``relative`` (under the repository, a module or folder of dce_batch) is not in the map."""
    entry = root.children.get("dce_batch/")
    if entry is None:
        return "the map has no dce_batch/"
    *folders, last = relative.parts[1:]
    for folder in folders:
        if f"{folder}/" not in entry.children:
            return f"no {folder}/ under {entry.name}"
        entry = entry.children[f"{folder}/"]
    if last == "__init__.py" or f"{last}/" in entry.children or last in entry.children:
        return None
    stem = last.removesuffix(".py")
    return None if _named(entry, stem) else f"{stem} not named under {entry.name}"


def test_the_readme_map_names_every_module_and_data_folder():
    root = readme_map()
    modules = sorted(p.relative_to(REPO) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    data_folders = sorted({p.parent.relative_to(REPO) for p in PACKAGE.rglob("*")
                           if p.is_file() and p.suffix not in (".py", ".pyc", ".typed")
                           and "__pycache__" not in p.parts and p.parent != PACKAGE})
    assert len(modules) > 50 and data_folders, (modules, data_folders)
    missing = {str(path): why for path in [*modules, *data_folders] if (why := _missing_from_map(root, path))}
    assert not missing, missing
    # and nothing in the map that is not in the tree
    def stale(entry: Entry, folder: Path) -> list[str]:
        found = []
        for name, child in entry.children.items():
            path = folder / name.rstrip("/")
            if not path.exists():
                found.append(str(path.relative_to(REPO)))
            elif name.endswith("/"):
                found += stale(child, path)
        return found

    assert stale(root.children["dce_batch/"], PACKAGE) == []


def test_the_map_reader_scopes_names_to_their_package():
    root = readme_map()
    assert _missing_from_map(root, Path("dce_batch/job/engines/ray.py")) is None
    assert _missing_from_map(root, Path("dce_batch/job/engines/nothing.py")) == "nothing not named under engines/"
    assert _missing_from_map(root, Path("dce_batch/training/charts.py")) == "charts not named under training/"


# -- the import graph --------------------------------------------------------------------------


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imports(path: Path, module: str, modules: dict[str, Path], *, in_functions: bool) -> set[str]:
    """The dce_batch modules ``module`` imports: at module level (not under ``TYPE_CHECKING``), and
    with ``in_functions`` also inside functions. ``from X import Y`` counts as X.Y when that is a
    module, else as X."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if in_functions:
                    visit(node.body)
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                found.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                             for alias in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])
                elif isinstance(child, ast.excepthandler):
                    visit(child.body)

    visit(ast.parse(path.read_text()).body)
    return {name for name in found if name in modules and name != module}


def _graph(*, in_functions: bool) -> dict[str, set[str]]:
    modules = _module_names()
    return {name: _imports(path, name, modules, in_functions=in_functions) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for node in sorted(graph):
            if node not in index:
                connect(node)
    finally:
        sys.setrecursionlimit(limit)
    return components


def _package(module: str) -> str:
    """``dce_batch.job.manifest.parts`` -> ``dce_batch.job``; top-level modules stand for themselves."""
    return ".".join(module.split(".")[:2])


def test_module_level_imports_form_no_cycle():
    graph = _graph(in_functions=False)
    assert sum(map(len, graph.values())) > 100, "the graph reader found the package's imports"
    assert _cycles(graph) == []


def test_packages_import_each_other_in_one_direction():
    """With the imports inside functions too (they run all the same), at package granularity."""
    packages: dict[str, set[str]] = {}
    edges: dict[tuple[str, str], list[str]] = {}
    for module, targets in _graph(in_functions=True).items():
        for target in targets:
            if _package(module) != _package(target):
                packages.setdefault(_package(module), set()).add(_package(target))
                edges.setdefault((_package(module), _package(target)), []).append(f"{module} -> {target}")
    cycles = {tuple(cycle) for cycle in _cycles(packages)}
    if cycles != KNOWN_PACKAGE_CYCLES:
        detail = {cycle: [edges.get((a, b)) for a in cycle for b in cycle if (a, b) in edges] for cycle in cycles}
        pytest.fail(f"package cycles {detail}; expected {KNOWN_PACKAGE_CYCLES}")


def test_the_cycle_finder():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_ray_is_imported_only_where_the_readme_says():
    allowed = {"dce_batch.job.engines.ray", "dce_batch.ray", "dce_batch.ray_logging"}
    importers = set()
    for module, path in _module_names().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(name == "ray" or name.startswith("ray.") for name in names):
                importers.add(module)
    assert importers, "the reader found the Ray modules"
    assert {m for m in importers if not m.startswith("dce_batch.training.")} <= allowed, importers
    readme = " ".join(README.read_text().split())
    assert "Ray is imported only by `job/engines/ray.py`, `ray.py`, `ray_logging.py` and `training/`" in readme


def test_the_moved_modules_table_names_modules_that_exist():
    text = README.read_text()
    table = text[text.index("| 0.1 | now |"):].split("\n\n", 1)[0]
    for row in table.splitlines()[2:]:
        old, new = row.strip("|").split("|")
        named = re.findall(r"`(dce_batch(?:\.\w+)*)`", new)
        assert named, row
        for name in named:
            path = REPO.joinpath(*name.split("."))
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), (name, row)
        for name in re.findall(r"`(dce_batch\.\w+)`", old):
            if "(a module)" not in row:  # the rest are gone: their new homes are the ones to use
                path = REPO.joinpath(*name.split("."))
                assert not path.with_suffix(".py").exists() and not (path / "__init__.py").exists(), (name, row)


def test_what_the_readme_writes_into_the_checkout_is_ignored_by_git():
    """The outputs of the README's commands that land in the working folder (relative OUTPUTs,
    training storage and exports) stay out of ``git status``."""
    import shlex
    import subprocess

    from dce_batch.job.config import DEFAULT_OUTPUT

    written = {DEFAULT_OUTPUT}
    for body in re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.M | re.S):
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["dce-batch", "enhance"]:
                positional = [w for i, w in enumerate(words[2:], 2)
                              if not w.startswith("-") and not words[i - 1].startswith("--")]
                written.update(positional[1:2])
            for option in ("--storage", "--export", "--out"):
                if option in words:
                    written.add(words[words.index(option) + 1])
    relative = sorted(w.removeprefix("./") for w in written if not w.startswith(("/", "s3://", "$")))
    assert "enhanced-samples" in relative and "runs" in relative, relative
    if subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    for path in relative:
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"{path}/"], cwd=REPO)
        assert ignored.returncode == 0, f"{path}/ (written by a README command) is not in .gitignore"


def test_one_version():
    """The package's version is declared twice (pyproject.toml, dce_batch/_version.py): the same."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    import dce_batch
    from dce_batch._version import __version__

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert declared == __version__ == dce_batch.__version__
