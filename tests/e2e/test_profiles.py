"""Every shipped profile runs end to end at tiny size, so a broken profile fails here.

The session's project copy (tests/e2e/conftest.py; after the default pipeline test it holds
that run's outputs, so DVC reruns only what the profile changes) is copied again; the profile
is applied as a user applies it (`python -m components.profiles <name>`) and the small test
profile then shrinks the sizes (model, steps, depths), leaving the profile's code paths on
(the GPU profile: Rabtriever over the whole corpus, the bi-encoder, three identifier views,
larger batches). The device is this machine's CPU.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from components.settings import REPO_ROOT
from tests.e2e.conftest import MINI, apply_test_profile, run

PROFILES = sorted(p.stem for p in (REPO_ROOT / "configs" / "profiles").glob("*.yaml"))

# What each profile switches on that the CPU default leaves off: rows its run must produce.
ROWS = {"gpu": {"Rabtriever (whole corpus)", "Bi-encoder, same LLM (whole corpus)", "DGR"}}


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_profile_runs_end_to_end_at_tiny_size(profile, repo_copy, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(repo_copy, root, symlinks=True)
    run(["python", "-m", "components.profiles", profile], root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["profile"] == profile
    apply_test_profile(params, root / "tiny-llm")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], root, timeout=900)
    metrics = json.loads((root / "outputs" / MINI / "eval/metrics.json").read_text())
    rows = {row for query_set in metrics["test"].values() for row in query_set}
    assert ROWS.get(profile, set()) <= rows, sorted(rows)
