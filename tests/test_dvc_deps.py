"""dvc.yaml's code deps follow the imports: every file a stage runs is covered by one of its deps.

A stage runs `python -m flows.<x>`; what it executes is the import closure of that module over
`components` and `flows` (function-level imports included, found with `ast`, nothing run). A file
of the closure that no dep covers is code DVC does not watch: edit it and `dvc repro` keeps the
stale outputs. The reverse, a code dep outside the closure, reruns a stage for nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from components.settings import REPO_ROOT

PACKAGES = ("components", "flows")

# Plumbing every stage imports that cannot change what a stage writes under outputs/: a change
# can make a stage fail or log differently, never compute something else. Listing them would
# rerun the whole pipeline (GPU training included) for an edit to logging or error messages.
# components/config.py is not here: it fills params from the dataset catalog, so it decides
# values a stage computes with.
NOT_A_DEP = {
    "components/__init__.py": "the package docstring, no code",
    "flows/__init__.py": "only calls components.settings.configure_environment",
    "components/settings.py": "environment of every entry point (state folders, telemetry off, "
                              "hubs offline): it can stop a stage, not change its numbers",
    "components/atomic.py": "moves a finished output into place; the bytes are the caller's",
    "components/strict_yaml.py": "refuses a params file with a key twice or an alias; a file it "
                                 "accepts reads as yaml.safe_load reads it",
    "components/tracking.py": "MLflow runs, tags and logged params; writes nothing under outputs/",
    "components/progress.py": "progress bars on stderr around a loop; they change no value",
    "flows/_stage.py": "turns expected failures into exit 1 and names the stage for the "
                       "judgements audit; it can stop a stage, not change its outputs",
}


def module_file(root: Path, module: str) -> Path | None:
    path = root.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_names(root: Path, path: Path) -> set[str]:
    """Every module name `path` may import, wherever the import statement sits."""
    package = ".".join(path.relative_to(root).parent.parts)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from the importing file's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            names.add(base)
            # `from pkg import name` imports pkg.name when that is a module
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_closure(root: Path, module: str) -> set[str]:
    """Repository-relative paths of the files `python -m <module>` can execute from our code."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        if parts[0] not in PACKAGES:
            continue
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            path = module_file(root, ".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_names(root, path))
    return {path.relative_to(root).as_posix() for path in seen}


def stage_modules(dvc_yaml: Path) -> dict[str, tuple[str, list[str]]]:
    """Each stage's flow module and its deps, as written in dvc.yaml."""
    stages = {}
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        match = re.fullmatch(r"python -m (flows\.\w+)", stage["cmd"].strip())
        assert match, f"stage {name}: cmd {stage['cmd']!r} is not `python -m flows.<stage>`"
        stages[name] = (match.group(1), [str(dep) for dep in stage.get("deps", [])])
    return stages


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


STAGES = stage_modules(REPO_ROOT / "dvc.yaml")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_file_a_stage_imports_is_covered_by_its_deps(stage):
    module, deps = STAGES[stage]
    closure = import_closure(REPO_ROOT, module)
    assert f"{module.replace('.', '/')}.py" in closure
    missing = sorted(p for p in closure if p not in NOT_A_DEP and not covered(p, deps))
    assert not missing, (f"stage {stage} (python -m {module}) imports files no dep in dvc.yaml "
                         f"covers: {missing}; add their package folder or module to its deps")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_code_dep_of_a_stage_is_imported_by_it(stage):
    module, deps = STAGES[stage]
    closure = import_closure(REPO_ROOT, module)
    stale = [dep for dep in deps if dep.startswith(tuple(f"{p}/" for p in PACKAGES))
             and not any(covered(path, [dep]) for path in closure)]
    assert not stale, (f"stage {stage} (python -m {module}) lists deps it does not import: "
                       f"{stale}; drop them from dvc.yaml so edits there do not rerun it")


def test_the_plumbing_left_out_exists():
    assert [p for p in NOT_A_DEP if not (REPO_ROOT / p).is_file()] == []


def test_the_closure_follows_function_level_and_from_imports(tmp_path):
    (tmp_path / "flows").mkdir()
    (tmp_path / "components" / "pkg").mkdir(parents=True)
    for init in ("flows", "components", "components/pkg"):
        (tmp_path / init / "__init__.py").write_text("")
    (tmp_path / "flows" / "stage.py").write_text(
        "import os\n\ndef main():\n    from components.pkg import inner\n")
    (tmp_path / "components" / "pkg" / "inner.py").write_text("from . import deeper\n")
    (tmp_path / "components" / "pkg" / "deeper.py").write_text("")
    (tmp_path / "components" / "pkg" / "unused.py").write_text("")
    assert import_closure(tmp_path, "flows.stage") == {
        "flows/__init__.py", "flows/stage.py", "components/__init__.py",
        "components/pkg/__init__.py", "components/pkg/inner.py", "components/pkg/deeper.py"}
    assert not covered("components/pkg/inner.py", ["components/pk"])
