"""DeepSpeed teacher training on the tiny model: it learns, and a resumed run equals an
uninterrupted one. (The 1- vs 2-process comparison is test_two_process.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from components.config import ParamsError
from components.evaluation.metrics import per_query_metrics
from components.llm.prompts import PromptTemplate
from components.teacher.data import build_groups, document_text, toy_retrieval_data
from components.teacher.dev_curve import DevSample
from components.teacher.reranker import LLMReranker
from components.teacher.training import DEFAULT_DEEPSPEED_CONFIG, loop_settings, train_teacher
from components.training.engine import deepspeed_config, read_config
from components.training.loop import warmup_linear_decay
from tests.helpers import section

TOY_DOC_TOKENS = 192  # the toy documents whole


def _groups(n_topics=8, offset=0):
    corpus, queries, qrels, run = toy_retrieval_data(n_topics=n_topics, offset=offset)
    return build_groups(corpus, queries, qrels, run, n_negatives=3, depth=n_topics, seed=0)


def _margins(model_dir, template):
    """Relevant minus distractor score on held-out topics (not seen in training)."""
    reranker = LLMReranker.from_pretrained(model_dir, template=template)
    return np.array(
        [
            s[0] - s[1:].max()
            for s in (reranker.score_pairs(g.pairs()) for g in _groups(4, offset=8))
        ]
    )


def _dev_sample(depth=8):
    """Held-out toy topics (never trained on) as the dev curve's queries."""
    corpus, queries, qrels, run = toy_retrieval_data(n_topics=4, offset=8)
    texts = {d: document_text(doc) for d, doc in corpus.items()}
    candidates = {q: list(hits)[:depth] for q, hits in run.items()}
    return DevSample(queries, candidates, texts, qrels, "ndcg_cut_10", depth)


def test_relevant_document_outranks_distractor_after_a_few_steps(tiny_model_dir, tmp_path):
    template = PromptTemplate.load("default")
    before = _margins(tiny_model_dir, template)
    dev = _dev_sample()
    params = section(
        "teacher",
        train_mode="full",
        lr=1e-2,
        warmup_ratio=0.0,
        max_steps=8,
        micro_batch_groups=4,
        global_batch_groups=8,
        max_doc_tokens=TOY_DOC_TOKENS,
        bf16=False,
        curve_every=3,
    )
    seen = []
    result = train_teacher(
        tiny_model_dir,
        _groups(),
        template,
        params,
        tmp_path / "ckpt",
        tmp_path / "out",
        on_step=seen.append,
        seed=0,
        dev_sample=dev,
    )
    assert result.completed and result.steps == 8 and [m.step for m in seen] == list(range(1, 9))
    assert seen[-1].loss < 0.5 * seen[0].loss
    assert all(m.tokens_per_s > 0 and m.lr > 0 for m in seen)
    after = _margins(result.output_dir, template)
    assert (after > 0).all() and after.mean() > before.mean() + 1.0, (before, after)
    # The dev curve: measured every 3 steps and after the last, and its last point is what the
    # saved model's rerank of the same candidates scores (one scoring function).
    assert [m.step for m in seen if m.dev] == [3, 6, 8]
    reranker = LLMReranker.from_pretrained(result.output_dir, template=template,
                                           max_doc_tokens=TOY_DOC_TOKENS)
    reranker.index(dev.texts)
    run = reranker.rerank(dev.queries, {q: [d for d, _ in hits]
                                        for q, hits in dev.candidates.items()})
    expected = per_query_metrics(run, dev.qrels, ["ndcg_cut_10"], sorted(dev.queries))
    assert seen[-1].dev["dev_ndcg_cut_10"] == pytest.approx(
        np.mean(list(expected["ndcg_cut_10"].values())), abs=1e-6)


def test_resumed_run_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    """Stop after 3 of 5 steps (an epoch is 2 steps, so the resume lands mid-epoch 1), restart
    with the same arguments, and compare with a run that never stopped. LoRA dropout makes
    the RNG state part of the check."""
    template = PromptTemplate.load("default")
    settings = dict(
        train_mode="lora",
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.1,
        lr=5e-3,
        max_steps=5,
        warmup_ratio=0.4,
        micro_batch_groups=2,
        global_batch_groups=4,
        max_doc_tokens=TOY_DOC_TOKENS,
        checkpoint_every=2,
        keep_checkpoints=1,
        bf16=False,
    )
    params = section("teacher", **settings)
    groups = _groups()
    full = train_teacher(
        tiny_model_dir, groups, template, params, tmp_path / "a_ckpt", tmp_path / "a", seed=0
    )
    first = train_teacher(
        tiny_model_dir,
        groups,
        template,
        params,
        tmp_path / "b_ckpt",
        tmp_path / "b",
        stop_after_steps=3,
        seed=0,
    )
    assert (first.steps, first.completed, first.output_dir) == (3, False, None)
    assert [p.name for p in sorted((tmp_path / "b_ckpt").glob("step*"))] == ["step00000003"]
    second = train_teacher(
        tiny_model_dir, groups, template, params, tmp_path / "b_ckpt", tmp_path / "b", seed=0
    )
    assert second.completed and second.steps == full.steps == 5
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=1e-5, atol=1e-6)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and not any("lora" in k for k in a)  # merged
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(a[k], base[k]) for k in a)  # training changed the weights
    # A checkpoint from other params is refused rather than silently continued.
    changed = section("teacher", **{**settings, "lr": 1e-3, "max_steps": 6})
    with pytest.raises(ValueError, match="lr"):
        train_teacher(
            tiny_model_dir, groups, template, changed, tmp_path / "b_ckpt", tmp_path / "c", seed=0
        )


def test_deepspeed_config_from_json_with_overrides():
    params = section("teacher", micro_batch_groups=2, global_batch_groups=8, zero_stage=3,
                     lr=3e-4)
    base = read_config(DEFAULT_DEEPSPEED_CONFIG)
    config = deepspeed_config(loop_settings(params, cuda=False), 2, grad_accum=2, base=base)
    assert config["train_batch_size"] == 8 and config["gradient_accumulation_steps"] == 2
    assert config["zero_optimization"]["stage"] == 3 and config["bf16"]["enabled"] is False
    assert config["gradient_clipping"] == 1.0  # the JSON's: the teacher section has none
    assert loop_settings(params, cuda=False).lr == 3e-4  # AdamW is the loop's client optimizer
    assert "optimizer" not in config and "scheduler" not in config
    assert not any(k.startswith("_") for k in config)
    on_gpu = deepspeed_config(loop_settings(params, cuda=True), 1, grad_accum=4, base=base)
    assert on_gpu["bf16"]["enabled"]
    with pytest.raises(ParamsError, match="teacher.zero_stage"):  # the schema's bounds: 0-3
        section("teacher", zero_stage=4)


def test_schedule_warms_up_then_decays_linearly():
    factor = warmup_linear_decay(total_steps=10, warmup_steps=2)
    values = [factor(s) for s in range(10)]
    assert values[0] > 0 and values[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert values[2:] == sorted(values[2:], reverse=True) and values[-1] == pytest.approx(1 / 8)
