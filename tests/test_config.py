from pathlib import Path

import pytest
import yaml

from components.config import ParamsError, load_params
from components.settings import REPO_ROOT


def test_repository_params_file_is_valid_and_complete():
    params = load_params(REPO_ROOT / "params.yaml")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    # Every section in the file is in the schema and vice versa: no hidden defaults.
    assert set(raw) == set(params.model_dump())
    for section, values in raw.items():
        if isinstance(values, dict):
            assert set(values) == set(params.model_dump()[section]), section


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path





def test_bad_dataset_name(tmp_path):
    with pytest.raises(ParamsError, match=r"data\.name"):
        load_params(_write(tmp_path, "data:\n  name: ../etc\n"))



def test_overrides_apply_dotted_keys(tmp_path):
    params = load_params(_write(tmp_path, "seed: 1\n"), overrides={"bm25.k1": 1.2})
    assert params.bm25.k1 == 1.2 and params.seed == 1


@pytest.mark.parametrize("profile", ["params.yaml", "configs/profiles/gpu.yaml"])
def test_shipped_profiles_are_whole_and_valid(profile):
    params = load_params(REPO_ROOT / profile)
    raw = yaml.safe_load((REPO_ROOT / profile).read_text())
    assert set(raw) == set(params.model_dump())
    assert params.profile == Path(profile).stem.replace("params", "cpu")
