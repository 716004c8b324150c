"""Where each stage writes, per dataset. `dvc.yaml` declares the same paths."""

from __future__ import annotations

from pathlib import Path

from components.settings import repo_root


class Layout:
    def __init__(self, dataset: str, root: Path | None = None):
        self.root = (root or repo_root()) / "outputs" / dataset

    @property
    def validation_dir(self) -> Path:
        return self.root / "validation"

    @property
    def bm25_index(self) -> Path:
        return self.root / "bm25" / "index"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, system: str) -> Path:
        return self.runs_dir / system

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"
