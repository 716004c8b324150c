"""Rabtriever on disk: `predictor.safetensors` (weights, and the feature-reading forms' IDF
table and feature statistics as buffers) and `rabtriever.json` (predictor config, pooling,
document cuts, prompt template and answer ids), beside the optional document index
(`index.py`). No pickle anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from components.llm.prompts import PromptTemplate
from components.rabtriever.predictor import Predictor, predictor_state

FORMAT_VERSION = 1  # of `rabtriever.json` and of the index's `doc_index.json`
PREDICTOR_FILE = "predictor.safetensors"
CONFIG_FILE = "rabtriever.json"


def write_student(folder: Path, predictor: Predictor, config: dict[str, Any]) -> None:
    """The predictor's weights and the config into `folder` (an existing, empty folder)."""
    save_file(predictor_state(predictor), folder / PREDICTOR_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def read_student(path: Path) -> tuple[dict[str, Any], PromptTemplate, Predictor]:
    """(config, prompt template, predictor with its weights) of a saved student; a format or a
    template that does not match what was recorded is refused."""
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported rabtriever format {config.get('format')!r}")
    template = PromptTemplate(**config["template"])
    if template.fingerprint() != config["template_fingerprint"]:
        raise ValueError(f"{path}: prompt template does not match its recorded fingerprint")
    predictor = Predictor.from_config(config["predictor"])
    predictor.load_state_dict(load_file(path / PREDICTOR_FILE))
    return config, template, predictor


__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "PREDICTOR_FILE", "read_student", "write_student"]
