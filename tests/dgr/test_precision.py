"""bf16 decoder layers: the scores stay close to fp32, the head and the weights stay fp32."""

from __future__ import annotations

import math

import pytest
import torch

from components.dgr.packing import packed_target_logprobs
from components.dgr.precision import bf16_layers, runs_bf16
from components.dgr.retriever import GenerativeRetriever, RetrieverConfig
from components.dgr.scoring import QueryPrompt
from components.dgr.trie import encode_identifier
from components.llm.base_model import load_causal_lm
from components.llm.precision import cpu_supports_bf16

native = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")


def _logprobs(model, tokenizer):
    prompts = QueryPrompt(tokenizer).encode(["apple river", "copper engine in winter"])
    targets = [encode_identifier(tokenizer, "title", t) for t in ["red fox", "blue sky x"]]
    with torch.no_grad():
        return packed_target_logprobs(model, prompts, targets)


def test_disabled_or_without_native_bf16_the_model_is_left_alone(tiny_model_dir, tokenizer):
    model = load_causal_lm(tiny_model_dir)
    before, _ = _logprobs(model, tokenizer)
    assert bf16_layers(model, enabled=False) is False and not runs_bf16(model)
    assert bf16_layers(model) is cpu_supports_bf16()
    if not cpu_supports_bf16():
        assert torch.equal(_logprobs(model, tokenizer)[0], before)


@native
def test_bf16_layers_score_close_to_fp32_with_an_fp32_head(tiny_model_dir, tokenizer):
    model = load_causal_lm(tiny_model_dir)
    keys = sorted(model.state_dict())
    fp32, mask = _logprobs(model, tokenizer)
    assert bf16_layers(model) and runs_bf16(model)
    assert bf16_layers(model)  # idempotent: wrapping twice changes nothing
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda _m, args, out: seen.append((args[0].dtype, out.dtype))
    )
    bf16, _ = _logprobs(model, tokenizer)
    hook.remove()
    assert seen and all(dtypes == (torch.float32, torch.float32) for dtypes in seen)
    difference = (bf16 - fp32)[mask].abs()
    assert 0 < difference.max() < 0.05, difference
    # The weights are those of the fp32 model: a saved checkpoint is unchanged.
    assert sorted(model.state_dict()) == keys
    assert all(p.dtype == torch.float32 for p in model.parameters())


@native
def test_bf16_beams_are_valid_and_scored_as_teacher_forcing(
    tiny_model_dir, tokenizer, trie, identifier_index, tmp_path
):
    trie_path, index_path = tmp_path / "trie.json", tmp_path / "identifiers.json"
    trie.save(trie_path)
    identifier_index.save(index_path)
    config = RetrieverConfig(view_weights={"title": 1.0}, bf16=True)
    retriever = GenerativeRetriever.from_pretrained(tiny_model_dir, trie_path, index_path, config)
    assert runs_bf16(retriever.model)
    hits = retriever.generate_identifiers(["apple river", "stone cloud"], "title", num_beams=4)
    for query, beams in zip(["apple river", "stone cloud"], hits, strict=True):
        assert beams
        for identifier, score in beams:
            assert identifier_index.docs("title", identifier)  # exists in the corpus
            forced = retriever.identifier_logprob(
                query, encode_identifier(tokenizer, "title", identifier)
            ).item()
            assert math.isfinite(score) and abs(score - forced) < 0.05, (score, forced)
