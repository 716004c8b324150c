"""Base-model conversion: same logits after save/reload, loadable without GGUF, left padding."""

from __future__ import annotations

import json

import pytest
import torch

from components.llm.base_model import (
    SMOLLM2_GGUF_SOURCE,
    load_causal_lm,
    load_tokenizer,
    max_logit_diff,
    prepare_base_model,
)


def test_local_checkpoint_round_trip(tiny_model_dir, tmp_path):
    out = prepare_base_model(str(tiny_model_dir), tmp_path / "base")
    assert (out / "model.safetensors").is_file()
    model, tokenizer = load_causal_lm(out), load_tokenizer(out)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert tokenizer.chat_template  # the prompt relies on it
    assert max_logit_diff(load_causal_lm(tiny_model_dir), model, tokenizer) == 0.0
    assert not list(tmp_path.glob(".base.tmp-*"))  # atomic: no leftovers


def test_failed_conversion_leaves_previous_output(tmp_path):
    target = tmp_path / "base"
    target.mkdir()
    (target / "marker").write_text("old")
    with pytest.raises(OSError):
        prepare_base_model(str(tmp_path / "does-not-exist"), target)
    assert (target / "marker").read_text() == "old"


@pytest.mark.slow
def test_smollm2_gguf_conversion(tmp_path):
    """The real GGUF: de-quantized, saved, reloaded; prepare_base_model checks the logits."""
    out = prepare_base_model(SMOLLM2_GGUF_SOURCE, tmp_path / "smollm2", atol=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # reloads as an ordinary checkpoint
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    model = load_causal_lm(out)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert model.dtype == torch.float32
