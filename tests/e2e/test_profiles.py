"""Every shipped profile runs end to end at tiny size, so a broken profile fails here.

The profile is applied as a user applies it (`python -m components.profiles <name>`); the small
test profile then shrinks the sizes (model, steps, depths) and leaves the profile's code paths
(the GPU profile: Rabtriever over the whole corpus, the bi-encoder, three identifier views) on.
The device is this machine's CPU.
"""

from __future__ import annotations

import json

import pytest
import yaml

from components.settings import REPO_ROOT
from tests.e2e.conftest import MINI, make_project_copy, run

PROFILES = sorted(p.stem for p in (REPO_ROOT / "configs" / "profiles").glob("*.yaml"))

# What each profile switches on that the CPU default leaves off: rows its run must produce.
ROWS = {"gpu": {"Rabtriever (whole corpus)", "Bi-encoder, same LLM (whole corpus)", "DGR"}}


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_profile_runs_end_to_end_at_tiny_size(profile, tmp_path):
    root = make_project_copy(tmp_path / "repo", profile=profile)
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["profile"] == profile
    run(["dvc", "repro"], root, timeout=900)
    metrics = json.loads((root / "outputs" / MINI / "eval/metrics.json").read_text())
    rows = {row for query_set in metrics["test"].values() for row in query_set}
    assert ROWS.get(profile, set()) <= rows, sorted(rows)
