"""The retrieval prompt's teacher-forced scores: the shared-prompt scorer against full rows."""

import pytest
import torch

from components.dgr.scoring import (
    QueryPrompt,
    SharedHead,
    make_lm_batch,
    shared_prompt_logprobs,
    target_logprobs,
)
from components.dgr.trie import encode_identifier, view_prefix_ids


@pytest.mark.parametrize(
    "picks",
    [
        [("ngram", "d03"), ("title", "d04"), ("semantic_id", "d05")],  # no shared head
        [("ngram", "d03"), ("ngram", "d04"), ("ngram", "d05")],  # "ngram:" moves to the prompt
    ],
)
def test_shared_prompt_logprobs_equal_one_row_per_pair(
    tiny_model, tokenizer, identifier_index, picks
):
    """Running each prompt once and expanding its cache scores targets as the full rows do,
    with gradients (stage 2 trains through it)."""
    prompt = QueryPrompt(tokenizer)
    prompts = prompt.encode(["apple river", "a much longer query about the copper engine"])
    targets = [
        encode_identifier(tokenizer, view, identifier_index.identifiers(view, doc)[0])
        for view, doc in picks
    ]
    head, _, _ = SharedHead.split(prompts, targets)
    one_view = len({view for view, _ in picks}) == 1
    assert (len(head) >= len(view_prefix_ids(tokenizer, "ngram"))) == one_view
    owners = [0, 1, 1]
    shared, shared_mask = shared_prompt_logprobs(
        tiny_model, prompts, targets, owners, tokenizer.pad_token_id
    )
    full, full_mask = target_logprobs(
        tiny_model,
        make_lm_batch([prompts[o] for o in owners], targets, tokenizer.pad_token_id),
    )
    # target_logprobs aligns targets right, the shared scorer left: compare per-row sums and
    # the token values in order.
    for i, target in enumerate(targets):
        assert shared_mask[i].sum() == full_mask[i].sum() == len(target)
        torch.testing.assert_close(
            shared[i][shared_mask[i]], full[i][full_mask[i]], atol=1e-4, rtol=1e-4
        )
    assert shared.requires_grad


def test_shared_head_leaves_every_target_a_token():
    head, prompts, targets = SharedHead.split([[1, 2], [3]], [[7, 8, 9], [7, 8, 9], [7, 8]])
    assert head.tokens == [7] and prompts == [[1, 2, 7], [3, 7]]
    assert targets == [[8, 9], [8, 9], [8]]
    head, prompts, targets = SharedHead.split([[1]], [[5, 6], [7, 6]])
    assert head.tokens == [] and prompts == [[1]] and targets == [[5, 6], [7, 6]]
