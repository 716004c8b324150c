"""Session-wide test set-up: offline, and all tracking/orchestration state in a tmp dir.

The repository's own mlflow.db and .prefect/ are never touched by the tests.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="rerank-distill-tests-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STATE / 'mlflow.db'}"
os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
os.environ.pop("PREFECT_API_URL", None)

from components.settings import configure_environment  # noqa: E402

configure_environment()


# The tiny model every model test uses: the real SmolLM2 tokenizer (from the bundled GGUF,
# never a download) and a randomly initialised 2-layer Llama on it, built once per session.
@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer (with chat template), read once from the GGUF and saved."""
    from transformers import AutoTokenizer

    from components.llm.base_model import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_master(smollm2_tokenizer_dir, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama (hidden 64) on the real tokenizer."""
    from components.llm.base_model import build_tiny_causal_lm

    return build_tiny_causal_lm(
        smollm2_tokenizer_dir, tmp_path_factory.mktemp("tiny") / "model", hidden_size=64
    )


@pytest.fixture
def tiny_model_dir(tiny_model_master, tmp_path) -> Path:
    """A private copy: a test may train or overwrite it without affecting the others."""
    return Path(shutil.copytree(tiny_model_master, tmp_path / "tiny_model"))


@pytest.fixture(scope="session")
def tokenizer(smollm2_tokenizer_dir):
    from components.llm.base_model import load_tokenizer

    return load_tokenizer(smollm2_tokenizer_dir)


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory) -> Path:
    """A working copy of the repository on the mini SciFact subset and the tiny model
    (`tests/e2e/conftest.py`); one per session, shared by tests/e2e and tests/reliability."""
    from tests.e2e.conftest import make_project_copy

    return make_project_copy(tmp_path_factory.mktemp("project") / "repo")
