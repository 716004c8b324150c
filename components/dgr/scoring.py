"""The retrieval prompt, and teacher-forced log-probabilities of identifier tokens under it.

Prompt choice: the query goes through the tokenizer's chat template (system instruction + one user
turn "Query: ..."), and the identifier is the assistant's reply. The base model is an instruct
model whose EOS (<|im_end|>) closes an assistant turn, so "identifier + EOS" is exactly a reply
in the format it already knows; a model without a chat template gets a plain-text layout
(`components.llm.prompts` renders both, as for the teacher). Retrieval and training both build
their inputs with `QueryPrompt`, so they see identical token ids.

Scoring: `target_logprobs` (summed: `sequence_logprobs`) gives the teacher-forced log p of each
identifier token on left-padded (prompt, identifier) rows (`make_lm_batch`), with positions as
in generate(), so a sum equals the beam-search score of the same identifier in `retriever`;
`shared_prompt_logprobs` gives the same values with each prompt run once for all its
identifiers (stage 2). `token_logprobs`, `target_labels`, `common_prefix` and `SharedHead` are
the pieces the packed rows (`packing`) and the frozen-trunk cache (`frozen_trunk`) build on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from components.llm.padding import left_pad
from components.llm.prompts import _split_chat_template  # the teacher's chat rendering

DGR_PROMPT_VERSION = "dgr-prompt-v1"  # bump on any change to the two strings below
DGR_SYSTEM = (
    "You are a search engine. Reply with the identifier of a passage relevant to the query."
)
DGR_USER = "Query: {query}"


class QueryPrompt:
    """Token ids of the retrieval prompt for a query (or, when indexing, a passage text)."""

    def __init__(self, tokenizer, max_tokens: int = 64, use_chat_template: bool = True):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        if use_chat_template:
            self.prefix, self.suffix = _split_chat_template(tokenizer, DGR_SYSTEM)
        else:
            self.prefix, self.suffix = DGR_SYSTEM + "\n\n", "\nIdentifier:"

    def truncate(self, text: str) -> str:
        text = " ".join(text.split())
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_tokens:
            return text
        # A cut inside a multi-byte character decodes to U+FFFD; drop it.
        return self.tokenizer.decode(ids[: self.max_tokens]).rstrip("\ufffd").rstrip()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        prompts = [
            self.prefix + DGR_USER.format(query=self.truncate(t)) + self.suffix for t in texts
        ]
        # The chat template holds its own special tokens; adding BOS again would double it.
        return self.tokenizer(prompts, add_special_tokens=False)["input_ids"]


@dataclass
class LMBatch:
    """Left-padded prompt + target rows; `labels` is -100 everywhere except target tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    target_width: int  # longest target: the logits needed are the last target_width + 1


def make_lm_batch(
    prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int
) -> LMBatch:
    rows = [list(p) + list(t) for p, t in zip(prompts, targets, strict=True)]
    input_ids, attention_mask = left_pad(rows, pad_id)
    labels = torch.full_like(input_ids, -100)
    for i, target in enumerate(targets):
        if target:
            labels[i, -len(target) :] = torch.as_tensor(list(target), dtype=torch.long)
    return LMBatch(input_ids, attention_mask, labels, max(len(t) for t in targets))


def target_logprobs(model: nn.Module, batch: LMBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log p of every target token: ([N, L] log-probs (0 off target), [N, L] mask).

    Left padding puts every target at the end of its row, so only the last L + 1 positions need
    the LM head (`logits_to_keep`): with a 49k vocabulary the head over all positions would cost
    more than the decoder. Positions ids follow the attention mask, as in `generate`, so these
    scores equal beam-search scores of the same sequences.
    """
    device = next(model.parameters()).device
    width = batch.target_width
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp_min(0)
    out = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        position_ids=position_ids.to(device),
        logits_to_keep=width + 1,
    )
    logits = out.logits[:, :-1].float()  # position t predicts token t + 1
    return label_logprobs(logits, batch.labels[:, -width:].to(device))


def label_logprobs(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, L] log p of each label (0 where it is -100), [N, L] mask) from [N, L, V] logits."""
    nll = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    )
    return -nll.view(labels.shape), labels != -100


def token_logprobs(lm_head: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[M] log p(tokens[m]) from the final (normed) hidden states [M, H] that predict them.

    Callers gather only the positions that predict a scored token: identifiers differ in
    length, so up to half of a padded block is padding, and with a 49k vocabulary the head over
    those positions would cost as much as the layers below it.
    """
    logits = lm_head(hidden).float()
    return -nn.functional.cross_entropy(logits, tokens, reduction="none")


def target_labels(targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """[N, L] target token ids left-aligned, -100 after each (L the longest target). Row i minus
    its last column is what is fed after prompt i; the pads there are never scored."""
    labels = torch.full((len(targets), max(len(t) for t in targets)), -100, dtype=torch.long)
    for i, target in enumerate(targets):
        labels[i, : len(target)] = torch.as_tensor(list(target), dtype=torch.long)
    return labels


def common_prefix(rows: Sequence[Sequence[int]], keep: int = 1) -> int:
    """Length of the token prefix all rows share, leaving each at least `keep` tokens."""
    shortest = min(len(r) for r in rows)
    n = 0
    while n < shortest - keep and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


@dataclass
class SharedHead:
    """The tokens every target of a batch starts with, moved to the end of every prompt.

    All identifiers of a view start with its prefix ("ngram:" is 3 of the ~9 tokens of an n-gram
    identifier), so scoring them once per prompt instead of once per target takes a third of
    the target tokens off a stage-2 step. The head's log-probabilities come from the prompt
    pass and are copied to each target, so the scores are those of the unsplit rows.
    """

    tokens: list[int]

    @classmethod
    def split(
        cls, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
    ) -> tuple[SharedHead, list[list[int]], list[list[int]]]:
        """(head, prompts + head, targets minus head); every target keeps at least one token."""
        n = common_prefix(targets)
        head = [int(t) for t in targets[0][:n]]
        return (
            cls(head),
            [list(p) + head for p in prompts],
            [list(t[n:]) for t in targets],
        )

    def __len__(self) -> int:
        return len(self.tokens)

    def join(
        self,
        head_logprobs: torch.Tensor,
        owners: torch.Tensor,
        logprobs: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unsplit rows' ([N, L] log-probs, mask) from the head's [B, len(head)] log-probs
        per prompt and the rest's [N, L - len(head)] per target."""
        head = head_logprobs.index_select(0, owners)
        return (
            torch.cat([head, logprobs], dim=1),
            torch.cat([torch.ones_like(head, dtype=torch.bool), mask], dim=1),
        )

    def labels(self, rows: int) -> torch.Tensor:
        """[rows, len(head)] labels: the head's tokens, predicted by a prompt's last positions."""
        return torch.tensor([self.tokens] * rows, dtype=torch.long).view(rows, len(self))


def shared_prompt_logprobs(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    owners: Sequence[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`target_logprobs` of the rows (prompts[owners[i]], targets[i]), each prompt run once.

    Stage 2 scores m passages per query under the same prompt; the prompt is ~8x longer than an
    identifier, so running it once and expanding its key/value cache to its targets cuts the
    tokens of a step about fivefold. The tokens all targets start with (the view prefix) join
    the prompts (`SharedHead`). Gradients flow through the cache. Returns ([N, L] log-probs
    of the target tokens (0 off target), [N, L] mask), L the longest target.
    """
    device = next(model.parameters()).device
    head, prompts, targets = SharedHead.split(prompts, targets)
    input_ids, attention_mask = left_pad(prompts, pad_id)
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=(attention_mask.cumsum(-1) - 1).clamp_min(0).to(device),
        use_cache=True,
        logits_to_keep=len(head) + 1,  # the head's tokens, then each target's first
    )
    owner = torch.as_tensor(list(owners), dtype=torch.long)
    prompt_logits = out.logits.float()
    head_logprobs, _ = label_logprobs(
        prompt_logits[:, : len(head)], head.labels(len(prompts)).to(device)
    )
    first = prompt_logits[:, -1].index_select(0, owner.to(device))  # predicts token 0
    labels = target_labels(targets)
    width = labels.shape[1]
    logits = first.unsqueeze(1)
    if width > 1:
        # Every target token but the last is fed after its prompt; pads (right) are never scored.
        cache = out.past_key_values
        cache.reorder_cache(owner.to(device))
        feed_mask = (labels[:, :-1] != -100).long()
        lengths = attention_mask.sum(-1).index_select(0, owner)
        rest = model(
            input_ids=torch.where(feed_mask.bool(), labels[:, :-1], pad_id).to(device),
            attention_mask=torch.cat(
                [attention_mask.index_select(0, owner), feed_mask], dim=1
            ).to(device),
            position_ids=(lengths[:, None] + torch.arange(width - 1)).to(device),
            past_key_values=cache,
            use_cache=True,
        )
        logits = torch.cat([logits, rest.logits.float()], dim=1)
    logprobs, mask = label_logprobs(logits, labels.to(device))
    return head.join(head_logprobs, owner.to(device), logprobs, mask)


def sequence_logprobs(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    pad_id: int,
) -> torch.Tensor:
    """[N] sum of log p(target tokens | prompt): differentiable unless called in inference mode."""
    logprobs, _ = target_logprobs(model, make_lm_batch(prompts, targets, pad_id))
    return logprobs.sum(-1)
