from pathlib import Path

import pytest
import yaml

from components.config import ParamsError, load_params
from components.profiles import write_params
from components.settings import REPO_ROOT

PARAMS_FILE = REPO_ROOT / "params.yaml"
PROFILES = sorted((REPO_ROOT / "configs" / "profiles").glob("*.yaml"))


def test_repository_params_file_is_valid_and_complete():
    params = load_params(PARAMS_FILE)
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    # Every section in the file is in the schema and vice versa: no hidden defaults.
    assert set(raw) == set(params.model_dump())
    for section, values in raw.items():
        if isinstance(values, dict):
            assert set(values) == set(params.model_dump()[section]), section


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_missing_key_fails_naming_the_file_and_the_key(tmp_path):
    """The schema holds no defaults: a key left out of the file is an error, not a fallback."""
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    del raw["teacher"]["lr"], raw["seed"]
    path = _write(tmp_path, raw)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message
    assert "teacher.lr: missing" in message and "seed: missing" in message


def test_null_resolves_from_the_catalog_but_a_missing_split_is_an_error(tmp_path):
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    assert raw["data"]["train_split"] is None
    assert load_params(_write(tmp_path, raw)).data.train_split == "train"
    del raw["data"]["train_split"]
    with pytest.raises(ParamsError, match=r"data\.train_split: missing"):
        load_params(_write(tmp_path, raw))


def test_bad_dataset_name():
    with pytest.raises(ParamsError, match=r"data\.name"):
        load_params(PARAMS_FILE, overrides={"data.name": "../etc"})


def test_a_renamed_section_says_its_new_name(tmp_path):
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["jepa"] = raw.pop("rabtriever")
    with pytest.raises(ParamsError, match="jepa -> rabtriever"):
        load_params(_write(tmp_path, raw))


def test_overrides_apply_dotted_keys():
    params = load_params(PARAMS_FILE, overrides={"bm25.k1": 1.2, "seed": 1})
    assert params.bm25.k1 == 1.2 and params.seed == 1


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_key_of_a_profile_is_in_params_yaml(profile):
    """A profile lists only keys it changes; a misspelt one would otherwise change nothing."""
    params = yaml.safe_load(PARAMS_FILE.read_text())
    changes = yaml.safe_load(profile.read_text())
    for key, value in changes.items():
        assert key in params, key
        if isinstance(value, dict):
            assert set(value) <= set(params[key]), set(value) - set(params[key])
    assert changes["profile"] == profile.stem


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_params_yaml_merged_with_each_profile_validates(profile, tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text(PARAMS_FILE.read_text())
    write_params(target, profile=profile.stem, root=REPO_ROOT)
    merged, changes = load_params(target), yaml.safe_load(profile.read_text())
    assert merged.profile == profile.stem
    for section, values in changes.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert getattr(getattr(merged, section), key) == value, f"{section}.{key}"
    # Keys the profile leaves alone keep params.yaml's values.
    assert merged.schedule == load_params(PARAMS_FILE).schedule


def test_a_profile_key_missing_from_params_yaml_is_refused(tmp_path):
    target = tmp_path / "params.yaml"
    original = PARAMS_FILE.read_text()
    target.write_text(original)
    typo = tmp_path / "typo.yaml"
    typo.write_text("teacher:\n  max_stepz: 10\n")
    with pytest.raises(ParamsError, match="teacher.max_stepz"):
        write_params(target, profile=str(typo), root=tmp_path)
    assert target.read_text() == original
