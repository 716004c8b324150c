"""The runtime environment: repository defaults, the user's own settings first."""

import os

from components.settings import configure_environment, user_prefect_profile


def _clean(monkeypatch, home):
    for key in ("PREFECT_HOME", "PREFECT_PROFILES_PATH", "PREFECT_API_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_the_repository_prefect_home_is_the_default_without_a_user_profile(monkeypatch,
                                                                           tmp_path):
    _clean(monkeypatch, tmp_path / "home")
    assert user_prefect_profile() is None
    configure_environment(tmp_path / "repo")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "repo" / ".prefect")


def test_a_users_prefect_profile_is_kept(monkeypatch, tmp_path):
    _clean(monkeypatch, tmp_path / "home")
    profiles = tmp_path / "home" / ".prefect" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text('active = "work"\n[profiles.work]\nPREFECT_API_URL = "http://x/api"\n')
    assert user_prefect_profile() == profiles
    configure_environment(tmp_path / "repo")
    assert "PREFECT_HOME" not in os.environ  # Prefect reads ~/.prefect and its active profile
    elsewhere = tmp_path / "profiles.toml"
    elsewhere.write_text("")
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(elsewhere))
    assert user_prefect_profile() == elsewhere
