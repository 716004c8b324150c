"""A local-path DVC remote: push data and model outputs, pull them into a fresh clone."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.e2e.conftest import MINI, run
from tests.ops.conftest import RUN_STAGES, commit

pytestmark = pytest.mark.slow

CACHED_OUTPUTS = [  # data, a search index, a model: what a teammate's clone must get back
    f"data/raw/{MINI}/corpus.jsonl",
    f"outputs/{MINI}/validation/report.json",
    f"outputs/{MINI}/runs/bm25/test.trec",
    "outputs/base_model/model.safetensors",
    f"outputs/{MINI}/teacher/model/model.safetensors",
    f"outputs/{MINI}/validation/report.md",  # reports are cached too (`dvc push` keeps them)
]


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_push_then_pull_on_a_fresh_clone_restores_data_and_models(pipeline_run, services,
                                                                   tmp_path):
    root = services.root
    remote = tmp_path / "dvc-remote"
    # The README's commands; an s3:// or gs:// URL in place of the path is the only change.
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], root)
    commit(root, "pipeline run on the test profile; storage remote")
    # The run produced these stages' outputs (a full run would be pushed by a bare `dvc push`).
    targets = [f"data/raw/{MINI}.dvc", *RUN_STAGES]
    pushed = run(["dvc", "push", *targets], root)
    assert "pushed" in pushed.stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    assert not (clone / CACHED_OUTPUTS[-1]).exists()
    # The bundled datasets come from the in-repo remote, as on any fresh clone (`make data`);
    # stages that read training data depend on the whole data/raw folder.
    bundled = sorted(str(p.relative_to(clone)) for p in (clone / "data/raw").glob("*.dvc")
                     if p.stem != MINI)
    run(["dvc", "pull", "-r", "bundled", *bundled], clone)
    run(["dvc", "pull", *targets], clone)
    for name in CACHED_OUTPUTS:
        assert _md5(clone / name) == _md5(root / name), name
    # Everything came back: every output is cached (a stage's dependency on the whole data/raw
    # folder may differ, as the original workspace holds local datasets beside the bundled
    # ones; the pulled outputs themselves must not).
    status = json.loads(run(["dvc", "status", "--json", *RUN_STAGES], clone).stdout)
    changed_outs = {stage: [c["changed outs"] for c in changes
                            if isinstance(c, dict) and "changed outs" in c]
                    for stage, changes in status.items()}
    assert not any(changed_outs.values()), status
