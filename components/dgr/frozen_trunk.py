"""Stage-2 passage scores with the frozen lower layers run once per (query, identifier) row.

In `top_layers` mode only the last N decoder layers and the final norm train; the token
embeddings, the layers below and the LM head (tied to the embeddings) stay frozen. The states
that enter the first trainable layer are then a fixed function of the token ids. Stage 2 scores
the same (query prompt, passage identifier) rows every epoch, so `FrozenTrunk` computes those
states once, on the step that first needs them, and every later step runs only the trainable
layers: with 6 of 30 layers trainable a step costs 1.7x less on CPU (the backward pass and the
LM head stay; `bench_dgr_stage2.py` in docs/studies.md).

The scores are those of `scoring.shared_prompt_logprobs` (each prompt once, the tokens every
identifier starts with moved into it, its identifiers after it), split at the first trainable
layer:

    h_k(prompt), h_k(identifier | prompt)     layers 0..k-1, no gradients, cached per row
    log p(identifier | prompt)                layers k..L-1 + norm + LM head, with gradients

Both passes pack a query's prompt and its m identifiers into one row (`components.dgr.packing`),
each identifier attending to the prompt and to itself, so no identifier pays for the padding
of the longest one, and the LM head runs only where a token is scored. Models that cannot run
packed rows (`packing.packable`) get no trunk: `FrozenTrunk.for_model` returns None and the
caller keeps the one-piece path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from components.dgr.packing import Packing, packable, run_layers, scored_logprobs
from components.dgr.scoring import SharedHead, target_labels

Ids = tuple[int, ...]


def first_trainable_layer(model: nn.Module) -> int | None:
    """k such that the embeddings and decoder layers 0..k-1 are frozen and layer k trains; None
    when the embeddings train, when no layer trains, or when a frozen layer sits above a
    trainable one (then no fixed states exist to cache)."""
    decoder = model.get_decoder()
    if any(p.requires_grad for p in decoder.embed_tokens.parameters()):
        return None
    trains = [any(p.requires_grad for p in layer.parameters()) for layer in decoder.layers]
    if True not in trains:
        return None
    k = trains.index(True)
    return k if all(trains[k:]) else None


class FrozenTrunk:
    """The states entering layer k of the rows scored so far, and scoring from there."""

    def __init__(self, model: nn.Module, first_layer: int):
        self.model = model
        self.decoder = model.get_decoder()
        self.k = first_layer
        self._prompts: dict[Ids, torch.Tensor] = {}  # prompt ids -> [P, H]
        self._targets: dict[tuple[Ids, Ids], torch.Tensor] = {}  # -> [len(target) - 1, H]

    @classmethod
    def for_model(cls, model: nn.Module) -> FrozenTrunk | None:
        k = first_trainable_layer(model)
        # (packable: no dropout either, which would make the frozen states differ per step.)
        if k is None or k == 0 or not packable(model):
            return None
        return cls(model, k)

    @property
    def cached_rows(self) -> int:
        return len(self._targets)

    @torch.no_grad()
    def _fill(self, prompts: list[Ids], targets: list[Ids], owners: list[int]):
        """Run layers 0..k-1 over the rows not cached yet, packed under their prompts."""
        missing = [i for i, t in enumerate(targets) if (prompts[owners[i]], t) not in self._targets]
        if not missing:
            return
        needed = sorted({owners[i] for i in missing})
        slot = {b: n for n, b in enumerate(needed)}
        fed = [targets[i][:-1] for i in missing]  # a target's last token is only predicted
        packing = _under_prompts(
            [len(prompts[b]) for b in needed],
            [len(f) for f in fed],
            [slot[owners[i]] for i in missing],
        )
        tokens = [
            torch.as_tensor(ids, dtype=torch.long) for ids in [prompts[b] for b in needed] + fed
        ]
        device = next(self.model.parameters()).device
        input_ids = packing.place(tokens, torch.tensor(0)).to(device)
        hidden = run_layers(self.model, self.decoder.embed_tokens(input_ids), packing, 0, self.k)
        for n, b in enumerate(needed):
            self._prompts[prompts[b]] = hidden[n, : len(prompts[b])].clone()
        for n, i in enumerate(missing):
            start = packing.starts[len(needed) + n]
            row = hidden[slot[owners[i]], start : start + len(fed[n])]
            self._targets[(prompts[owners[i]], targets[i])] = row.clone()

    def logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]],
        owners: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same result as `shared_prompt_logprobs(model, prompts, targets, owners, pad_id)`
        (packed rows need no padding id)."""
        head, prompts, targets = SharedHead.split(prompts, targets)
        prompts = [tuple(p) for p in prompts]
        targets = [tuple(t) for t in targets]
        owners = list(owners)
        self._fill(prompts, targets, owners)
        states = [self._prompts[p] for p in prompts]
        states += [self._targets[(prompts[owners[i]], t)] for i, t in enumerate(targets)]
        packing = _under_prompts([len(p) for p in prompts], [len(t) - 1 for t in targets], owners)
        hidden = packing.place(states, states[0].new_zeros(states[0].shape[-1]))
        hidden = run_layers(self.model, hidden, packing, self.k, len(self.decoder.layers))
        # A prompt's last len(head) + 1 columns predict the head's tokens, then the first token
        # of each of its targets; a target's fed tokens predict the rest of it.
        prompt_ends = [packing.last_column(b) for b in range(len(prompts))]
        head_columns = [list(range(end - len(head), end)) for end in prompt_ends]
        head_logprobs, _ = scored_logprobs(
            self.model, hidden, range(len(prompts)), head_columns, head.labels(len(prompts))
        )
        target_columns = [
            [prompt_ends[owners[i]], *range(packing.starts[len(prompts) + i],
                                            packing.last_column(len(prompts) + i) + 1)]
            for i in range(len(targets))
        ]  # fmt: skip
        logprobs, mask = scored_logprobs(
            self.model, hidden, owners, target_columns, target_labels(targets)
        )
        owner_index = torch.as_tensor(owners, device=hidden.device)
        return head.join(head_logprobs, owner_index, logprobs, mask)


def _under_prompts(
    prompt_lengths: Sequence[int], fed_lengths: Sequence[int], owners: Sequence[int]
) -> Packing:
    """A row per prompt: the prompt, then the fed tokens of each of its targets."""
    return Packing.build(
        list(prompt_lengths) + list(fed_lengths),
        [None] * len(prompt_lengths) + list(owners),
        list(range(len(prompt_lengths))) + list(owners),
    )
