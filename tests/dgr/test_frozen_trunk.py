"""The frozen-trunk scorer gives stage 2 the scores and gradients of the one-piece scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.dgr.frozen_trunk import FrozenTrunk, first_trainable_layer
from components.dgr.scoring import QueryPrompt, shared_prompt_logprobs
from components.dgr.trie import encode_identifier


@pytest.fixture
def top_layer_model(tiny_model_dir):
    """The tiny 2-layer model with only its last layer (and the final norm) trainable."""
    from components.llm.base_model import load_causal_lm
    from components.teacher.training import apply_train_mode
    from tests.dgr.test_training import dgr_params

    params = dgr_params(train_mode="top_layers", top_layers=1)
    return apply_train_mode(load_causal_lm(tiny_model_dir), params)


MIXED_VIEWS = [("ngram", "d03", 0), ("title", "d04", 1), ("semantic_id", "d05", 1),
               ("ngram", "d07", 2), ("span", "d03", 0)]  # fmt: skip
ONE_VIEW = [("ngram", "d03", 0), ("ngram", "d04", 1), ("ngram", "d05", 1), ("ngram", "d07", 2),
            ("ngram", "d02", 0)]  # fmt: skip  (their shared "ngram:" joins the prompts)


def _rows(tokenizer, identifier_index, picks=MIXED_VIEWS):
    prompts = QueryPrompt(tokenizer).encode(
        ["apple river", "a much longer query about the copper engine", "stone"]
    )
    targets = [
        encode_identifier(tokenizer, view, identifier_index.identifiers(view, doc)[0])
        for view, doc, _ in picks
    ]
    return prompts, targets, [owner for *_, owner in picks]


def test_first_trainable_layer(tiny_model, top_layer_model):
    assert first_trainable_layer(top_layer_model) == 1
    assert first_trainable_layer(tiny_model) is None  # the embeddings train: nothing is fixed
    assert FrozenTrunk.for_model(tiny_model) is None
    top_layer_model.get_decoder().layers[0].requires_grad_(True)
    top_layer_model.get_decoder().embed_tokens.requires_grad_(False)
    assert first_trainable_layer(top_layer_model) == 0
    top_layer_model.get_decoder().layers[1].requires_grad_(False)
    assert first_trainable_layer(top_layer_model) is None  # frozen above trainable


@pytest.mark.parametrize("picks", [MIXED_VIEWS, ONE_VIEW], ids=["mixed_views", "one_view"])
def test_scores_and_gradients_equal_the_one_piece_scorer(
    top_layer_model, tokenizer, identifier_index, picks
):
    prompts, targets, owners = _rows(tokenizer, identifier_index, picks)
    pad = tokenizer.pad_token_id
    trainable = [p for p in top_layer_model.parameters() if p.requires_grad]

    expected, expected_mask = shared_prompt_logprobs(top_layer_model, prompts, targets, owners, pad)
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in trainable]
    top_layer_model.zero_grad(set_to_none=True)

    trunk = FrozenTrunk.for_model(top_layer_model)
    assert trunk is not None and trunk.k == 1
    for _ in range(2):  # the first call fills the cache, the second reads it
        got, got_mask = trunk.logprobs(prompts, targets, owners)
        assert trunk.cached_rows == len(targets)
        assert torch.equal(got_mask, expected_mask)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        got.sum().backward()
        for param, grad in zip(trainable, expected_grads, strict=True):
            torch.testing.assert_close(param.grad, grad, atol=1e-5, rtol=1e-4)
        top_layer_model.zero_grad(set_to_none=True)

    # A batch in another order and padding, partly cached, still scores every row the same.
    order = [4, 1, 0]
    sub_prompts = [prompts[owners[i]] for i in order]
    got, _ = trunk.logprobs(sub_prompts, [targets[i] for i in order], [0, 1, 2])
    torch.testing.assert_close(got.sum(-1), expected.sum(-1)[order].detach(), atol=1e-5, rtol=1e-5)


def test_stage2_trains_the_same_with_and_without_the_cache(
    tiny_model_dir, identifier_index, tmp_path
):
    """Same losses step by step and the same trained weights: the cache changes only the cost."""
    from safetensors.torch import load_file

    from components.dgr.training import train_stage2
    from tests.dgr.test_training import QUERIES, dgr_params, teacher_fixture

    teacher = teacher_fixture(identifier_index)
    runs = {}
    for cached in (True, False):
        params = dgr_params(train_mode="top_layers", top_layers=1, lr=3e-3, batch_size=2,
                            num_passages=5, alpha=0.1, checkpoint_every=100,
                            cache_frozen_states=cached)  # fmt: skip
        out = tmp_path / f"cached_{cached}"
        result = train_stage2(tiny_model_dir, QUERIES, teacher, identifier_index, params,
                              out / "ckpt", out / "model", seed=0, max_steps=4)  # fmt: skip
        runs[cached] = (result.losses, load_file(result.output_dir / "model.safetensors"))
    (cached_losses, cached_weights), (plain_losses, plain_weights) = runs[True], runs[False]
    assert len(cached_losses) == 4 and cached_losses[-1] < cached_losses[0]
    np.testing.assert_allclose(cached_losses, plain_losses, rtol=1e-4, atol=1e-5)
    # Adam divides each update by the gradient's running RMS, so an element whose gradient is
    # near zero turns a last-bit difference of the two summation orders into a visible weight
    # difference (1.4e-5 on one of 8192 elements on an Intel Xeon, after 4 steps of lr 3e-3):
    # a tolerance of 1/60 of one step, far below what a real difference would move.
    for name, weight in plain_weights.items():
        torch.testing.assert_close(cached_weights[name], weight, atol=5e-5, rtol=1e-4)
