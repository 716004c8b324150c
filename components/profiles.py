"""Profiles: the keys of `params.yaml` a setting changes (`configs/profiles/<name>.yaml`).

`params.yaml` holds every knob (the CPU default); a profile such as `gpu` lists only the keys
it changes, each with its own comment. Applying it (`write_params`) writes those keys over
params.yaml, which is the file DVC reads: a run with other settings must write them there.
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

from components.config import ParamsError, load_params, require_dataset
from components.settings import repo_root


def profile_path(profile: str, root: Path | None = None) -> Path:
    """A profile by name (`configs/profiles/<name>.yaml`) or by path."""
    root = root or repo_root()
    named = root / "configs" / "profiles" / f"{profile}.yaml"
    path = named if named.is_file() else (root / profile)
    if not path.is_file():
        known = sorted(p.stem for p in (root / "configs" / "profiles").glob("*.yaml"))
        raise ParamsError(f"profile {profile!r}: no such file (known profiles: {known})")
    return path


def _round_trip():
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # long lines stay on one line, as written
    rt.representer.add_representer(  # `null` stays `null`, not an empty value
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def _take_comment(target, source, key: str) -> None:
    """The profile's end-of-line comment for `key`, in place of params.yaml's.

    Only the comment's first line: the rest of a token is the blank lines (and comments) that
    follow the key in its own file, which belong to the layout of that file.
    """
    new, old = source.ca.items.get(key), target.ca.items.get(key)
    if not (new and new[2] and old and old[2]):
        return
    tail = old[2].value.split("\n", 1)[1] if "\n" in old[2].value else ""
    old[2].value = new[2].value.split("\n", 1)[0] + "\n" + tail


def merge_profile(document, profile, source: Path) -> None:
    """Write `profile`'s keys over `document` (ruamel round-trip maps), in place.

    A mapping at the top level is a section, merged key by key; a value inside a section is
    written whole (`dgr.view_weights` is replaced, not merged). A key params.yaml lacks is an
    error: a profile changes keys, so a misspelt one must not pass unnoticed.
    """
    for key, value in profile.items():
        if key not in document:
            raise ParamsError(f"{source}: unknown key {key!r} (not in params.yaml)")
        if not isinstance(value, dict):
            document[key] = value
            _take_comment(document, profile, key)
            continue
        section = document[key]
        if not isinstance(section, dict):
            raise ParamsError(f"{source}: {key!r} is a section here, a value in params.yaml")
        for name, item in value.items():
            if name not in section:
                raise ParamsError(f"{source}: unknown key '{key}.{name}' (not in params.yaml)")
            section[name] = item
            _take_comment(section, value, name)


def write_params(target: Path, profile: str = "", overrides: dict[str, Any] | None = None,
                 root: Path | None = None) -> list[str]:
    """Write a profile's keys and dotted-key overrides over `target` (params.yaml).

    The way `dvc exp run -S key=value` changes the workspace: DVC reads params.yaml, so a run
    with other settings must write them there. Keys the profile does not list keep their
    values; comments survive (ruamel round trip). The result is validated before anything is
    written; nothing is written when it equals the current file. Returns what changed.
    """
    if not target.is_file():
        raise ParamsError(f"{target}: no such params file (a profile changes some of its keys)")
    rt = _round_trip()
    before = target.read_text(encoding="utf-8")
    document = rt.load(before)
    if profile:
        source = profile_path(profile, root)
        merge_profile(document, rt.load(source.read_text(encoding="utf-8")), source)
    for dotted, value in (overrides or {}).items():
        node = document
        *parents, leaf = dotted.split(".")
        for part in parents:
            if part not in node or not isinstance(node[part], dict):
                raise ParamsError(f"override {dotted}: no section {part!r} in params")
            node = node[part]
        node[leaf] = value
    buffer = StringIO()
    rt.dump(document, buffer)
    text = buffer.getvalue()
    if text == before:
        return []
    staged = target.with_name(f".{target.name}.new")
    staged.write_text(text, encoding="utf-8")
    try:
        new = load_params(staged)
        # The dataset and its splits too: a run for a dataset that does not exist must leave
        # params.yaml as it was, or every later run (scheduled ones too) fails the same way.
        require_dataset(new, target)
    except ParamsError:
        staged.unlink()
        raise
    try:
        old_flat = _flat(load_params(target).model_dump())
    except ParamsError:  # the file was broken before: every key counts as changed
        old_flat = {}
    staged.replace(target)
    new_flat = _flat(new.model_dump())
    return [f"{key}: {old_flat.get(key)!r} -> {value!r}" for key, value in new_flat.items()
            if old_flat.get(key) != value]


def _flat(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict) and key != "view_weights":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a profile's keys over params.yaml.")
    parser.add_argument("profile", help="a name in configs/profiles/ (e.g. gpu) or a path")
    parser.add_argument("--params", default="params.yaml", help="the params file to change")
    args = parser.parse_args(argv)
    try:
        changes = write_params(Path(args.params), profile=args.profile)
    except ParamsError as exc:
        raise SystemExit(f"profile not applied: {exc}") from None
    print("\n".join(changes) or f"{args.params} already holds profile {args.profile}")


if __name__ == "__main__":
    main()
