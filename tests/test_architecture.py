"""ARCHITECTURE.md's map, checked: the layers import only downward, product code never imports the
demo, no CLI imports another CLI, nothing outside the storage layer renames a temp file, and no
run-path literal is built outside it. Walks every product module's AST (imports inside functions
included), so a new module is checked without being listed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "queries", "curation", "pretrain", "contamination", "pipelines")

# what each layer may import (besides itself); the first matching prefix wins
ALLOWED = (
    ("storage", set()),
    ("queries", {"storage"}),
    ("curation.text", {"storage", "queries", "curation.stage", "curation.xxh3"}),
    ("curation.web", {"storage", "queries", "curation.stage"}),
    ("curation.images", {"storage", "queries", "curation.stage", "curation.xxh3", "curation.text", "curation.report",
                         "curation.datasheet"}),
    ("curation", {"storage", "queries", "curation"}),
    ("pretrain", {"storage", "curation.text.balance"}),  # online balancing draws with curation's pure draw
    ("contamination", {"storage", "curation", "pretrain"}),
    ("pipelines.demo", {"storage", "queries", "curation", "pretrain", "contamination", "pipelines"}),
    ("pipelines", {"storage", "queries", "curation", "pretrain", "contamination", "pipelines"}),
)


def product_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(p for p in parts if p != "__init__")] = path
    return modules


MODULES = product_modules()


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of one of our packages, at any depth of the file (those
    under ``if TYPE_CHECKING:`` are annotations only and are left out)."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if f"{node.module}.{a.name}" in MODULES]  # `from pipelines import build_wit`
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> tuple[str, set[str]]:
    return next((prefix, allowed) for prefix, allowed in ALLOWED if _under(module, prefix))


def test_every_package_module_is_checked():
    assert len(MODULES) > 100 and all(any(_under(m, p) for p, _ in ALLOWED) for m in MODULES)


def test_no_upward_or_sideways_import():
    bad = []
    for module, path in MODULES.items():
        layer, allowed = layer_of(module)
        for line, name in imports_of(path):
            if not (_under(name, layer) or any(_under(name, a) for a in allowed)):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {name}")
    assert not bad, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(bad)


def test_product_code_never_imports_the_demo():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for module, path in MODULES.items() if not _under(module, "pipelines.demo")
           for line, name in imports_of(path) if _under(name, "pipelines.demo")]
    assert not bad, "\n".join(bad)


def is_cli(path: Path) -> bool:
    return "__main__" in path.read_text() and path.parent.name == "pipelines"


def test_no_cli_imports_another_cli():
    clis = {m for m, p in MODULES.items() if is_cli(p)}
    assert {"pipelines.build_wit", "pipelines.pretrain", "pipelines.contamination_report"} <= clis
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line} imports the CLI {name}"
           for m in MODULES if _under(m, "pipelines") and not _under(m, "pipelines.demo")
           for line, name in imports_of(MODULES[m]) if name in clis and name != m]
    assert not bad, "\n".join(bad)


RENAMES = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("shutil", "move")}


def renames_in(path: Path) -> list[int]:
    """Lines that move a file into place: os.replace/rename, shutil.move, ``<x>.rename(...)``,
    ``<x>.mv(...)`` (fsspec), ``<path>.replace(<path>)`` with one argument (pathlib)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        attr = node.func.attr
        if (owner, attr) in RENAMES or attr in ("rename", "mv") or (
                attr == "replace" and len(node.args) == 1 and not node.keywords and owner not in ("np", "str")
                and not isinstance(node.func.value, ast.Constant)):
            lines.append(node.lineno)
    return lines


def test_temp_and_rename_only_in_the_storage_layer():
    bad = [f"{path.relative_to(ROOT)}:{line}" for module, path in MODULES.items()
           if not _under(module, "storage") for line in renames_in(path)]
    assert not bad, "temp-and-rename outside storage/ (use storage.files.atomic_write):\n" + "\n".join(bad)


def test_the_rename_check_finds_renames(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import os\nos.replace(a, b)\ntmp.replace(path)\nfs.mv(a, b)\ns.replace('a', 'b')\n")
    assert renames_in(sample) == [2, 3, 4]


# directory and file names of a run: only storage/layout.py spells them
RUN_PATH = re.compile(r"(^|/)(curation|checkpoints|shards|heldout|selected|_done|_nodes|_read|_counts|shardplan|"
                      r"rejects|stats|pretrain|reports|eval)(/|$)|(result|results|details)\.json|metrics\.jsonl|"
                      r"(queries|entry_counts|eval_index|eval_text)\.parquet|\{\w*:0[56]d\}|part-\{")


def run_path_literals(path: Path) -> list[tuple[int, str]]:
    """String constants (f-string parts included) that spell a run path, outside docstrings and
    argparse help / description texts."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))  # docstring
        if isinstance(node, ast.keyword) and node.arg in ("help", "description", "epilog"):
            skip.update(id(n) for n in ast.walk(node.value))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{" + (
                ast.unparse(v.format_spec).strip("f'\"") if v.format_spec else "x") + "}"
                for v in node.values if isinstance(v, (ast.Constant, ast.FormattedValue)))
            skip.update(id(v) for v in node.values)
            if RUN_PATH.search(text) and "/" in text or re.search(r"\{\w*:0[56]d\}|part-\{", text):
                found.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and RUN_PATH.search(node.value) and (
                "/" in node.value or "." in node.value) and not node.value.startswith("openwit://"):  # Asset names
            found.append((node.lineno, node.value))
    return found


def test_no_run_path_literal_outside_the_storage_layer():
    bad = [f"{path.relative_to(ROOT)}:{line}: {text!r}" for module, path in MODULES.items()
           if not _under(module, "storage") and not _under(module, "pipelines.demo")
           for line, text in run_path_literals(path)]
    assert not bad, "run paths built outside storage/layout.py:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, hits", [
    ('x = f"{out}/curation/stats/{stage}.json"', 1), ('p = root / "result.json"', 1),
    ('n = f"part-{i:05d}"', 1), ('"""<out>/curation/ in a docstring"""', 0),
    ('p.add_argument("--out", help="writes <out>/curation/")', 0), ('x = "stats"', 0),
])
def test_the_run_path_check_finds_literals(tmp_path, source, hits):
    sample = tmp_path / "m.py"
    sample.write_text(source + "\n")
    assert len(run_path_literals(sample)) == hits


def import_cycles() -> list[list[str]]:
    """Groups of our modules that import each other in a circle (function-level imports too)."""
    graph = {m: {n for _, n in imports_of(p) if n in MODULES and n != m} for m, p in MODULES.items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(m):  # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in graph[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                group.append(n)
                if n == m:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for m in graph:
        if m not in index:
            visit(m)
    return groups


def test_no_import_circles():
    """No circle of imports anywhere, the demo included (it had a five-file one)."""
    assert import_cycles() == []


def test_jobs_upload_every_package():
    """``ray job submit`` (.rayignore) and the DAGs' jobs (ray_jobs.PROJECT_PACKAGES) carry every
    package of the map: a package left out fails only on a cluster."""
    from pipelines.ray_jobs import PROJECT_PACKAGES

    assert set(PROJECT_PACKAGES) == set(PACKAGES)
    rayignore = (ROOT / ".rayignore").read_text().split()
    assert all(f"!/{p}" in rayignore and f"!/{p}/**" in rayignore for p in PACKAGES)
