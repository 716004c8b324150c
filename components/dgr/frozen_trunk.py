"""Stage-2 passage scores with the frozen lower layers run once per (query, identifier) row.

In `top_layers` mode only the last N decoder layers and the final norm train; the token
embeddings, the layers below and the LM head (tied to the embeddings) stay frozen. The states
that enter the first trainable layer are then a fixed function of the token ids. Stage 2 scores
the same (query prompt, passage identifier) rows every epoch, so `FrozenTrunk` computes those
states once, on the step that first needs them, and every later step runs only the trainable
layers: with 6 of 30 layers trainable a step costs 1.7x less on CPU (the backward pass and the
LM head stay; `scripts/bench_dgr_stage2.py`).

The scores are those of `retriever.shared_prompt_logprobs` (each prompt once, the tokens every
identifier starts with moved into it, its identifiers after it), split at the first trainable
layer:

    h_k(prompt), h_k(identifier | prompt)     layers 0..k-1, no gradients, cached per row
    log p(identifier | prompt)                layers k..L-1 + norm + LM head, with gradients

Both passes pack a query's prompt and its m identifiers into one row, each identifier attending
to the prompt and to itself (block-causal mask, positions continuing the prompt's), so no
identifier pays for the padding of the longest one, and the LM head runs only where a token is
scored. Only decoders whose layers all attend over the whole sequence (Llama, Qwen2 without
sliding windows) with SDPA or eager attention are split; for anything else
`FrozenTrunk.for_model` returns None and the caller keeps the one-piece path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from components.dgr.retriever import SharedHead, target_labels, token_logprobs

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


def _full_attention_only(config) -> bool:
    layer_types = getattr(config, "layer_types", None) or []
    return all(kind == "full_attention" for kind in layer_types) and not getattr(
        config, "use_sliding_window", False
    )


def _run_layers(
    decoder: nn.Module,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    position_ids: torch.Tensor,
    start: int,
    stop: int,
) -> torch.Tensor:
    """Decoder layers start..stop-1 over `hidden` under a ready 4-D mask (no cache)."""
    position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)
    for layer in decoder.layers[start:stop]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
        )
    return hidden


@dataclass
class PackedRows:
    """Per prompt one row: the prompt, then the fed tokens of each of its targets.

    A target's fed tokens (all but its last) attend to the prompt and to each other causally,
    never to another target, and take the positions that follow the prompt, as they would
    behind the prompt alone. Padding at the end attends only to itself.
    """

    prompt_lengths: list[int]
    starts: list[int]  # per target: the column of its first fed token
    position_ids: torch.Tensor  # [B, T]
    allowed: torch.Tensor  # [B, 1, T, T] bool, True where a query position may attend

    @classmethod
    def build(
        cls, prompt_lengths: Sequence[int], fed_lengths: Sequence[int], owners: Sequence[int]
    ) -> PackedRows:
        ends = list(prompt_lengths)
        starts = []
        for owner, n in zip(owners, fed_lengths, strict=True):
            starts.append(ends[owner])
            ends[owner] += n
        width = max(ends)
        rows = len(prompt_lengths)
        position_ids = torch.zeros(rows, width, dtype=torch.long)
        allowed = torch.zeros(rows, width, width, dtype=torch.bool)
        for b, length in enumerate(prompt_lengths):
            position_ids[b, :length] = torch.arange(length)
            allowed[b, :length, :length] = torch.ones(length, length, dtype=torch.bool).tril()
            pads = torch.arange(ends[b], width)
            allowed[b, pads, pads] = True
        for owner, start, n in zip(owners, starts, fed_lengths, strict=True):
            length = prompt_lengths[owner]
            span = slice(start, start + n)
            position_ids[owner, span] = length + torch.arange(n)
            allowed[owner, span, :length] = True
            allowed[owner, span, span] = torch.ones(n, n, dtype=torch.bool).tril()
        return cls(list(prompt_lengths), starts, position_ids, allowed[:, None])

    @property
    def width(self) -> int:
        return self.position_ids.shape[1]

    def attention_mask(self, implementation: str, dtype: torch.dtype) -> torch.Tensor:
        """The mask in the form the attention implementation takes (SDPA: bool; eager: additive)."""
        if implementation == "sdpa":
            return self.allowed
        return torch.zeros(self.allowed.shape, dtype=dtype).masked_fill(
            ~self.allowed, torch.finfo(dtype).min
        )


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
        config = model.config
        # Dropout in the frozen layers would make their states differ from step to step.
        dropout = getattr(config, "attention_dropout", 0.0) or 0.0
        packable = getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
        if k is None or k == 0 or dropout > 0 or not packable or not _full_attention_only(config):
            return None
        return cls(model, k)

    @property
    def cached_rows(self) -> int:
        return len(self._targets)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _layers(self, hidden: torch.Tensor, packed: PackedRows, start: int, stop: int):
        device = hidden.device
        mask = packed.attention_mask(self.model.config._attn_implementation, hidden.dtype)
        return _run_layers(
            self.decoder, hidden, mask.to(device), packed.position_ids.to(device), start, stop
        )

    @torch.no_grad()
    def _fill(self, prompts: list[Ids], targets: list[Ids], owners: list[int]):
        """Run layers 0..k-1 over the rows not cached yet, packed under their prompts."""
        missing = [i for i, t in enumerate(targets) if (prompts[owners[i]], t) not in self._targets]
        if not missing:
            return
        needed = sorted({owners[i] for i in missing})
        slot = {b: n for n, b in enumerate(needed)}
        fed = [targets[i][:-1] for i in missing]  # the last token is only predicted
        packed = PackedRows.build(
            [len(prompts[b]) for b in needed],
            [len(f) for f in fed],
            [slot[owners[i]] for i in missing],
        )
        input_ids = torch.zeros(len(needed), packed.width, dtype=torch.long)
        for n, b in enumerate(needed):
            input_ids[n, : len(prompts[b])] = torch.as_tensor(prompts[b])
        for i, start, tokens in zip(missing, packed.starts, fed, strict=True):
            input_ids[slot[owners[i]], start : start + len(tokens)] = torch.as_tensor(tokens)
        hidden = self.decoder.embed_tokens(input_ids.to(self._device))
        hidden = self._layers(hidden, packed, 0, self.k)
        for n, b in enumerate(needed):
            self._prompts[prompts[b]] = hidden[n, : len(prompts[b])].clone()
        for i, start, tokens in zip(missing, packed.starts, fed, strict=True):
            row = hidden[slot[owners[i]], start : start + len(tokens)]
            self._targets[(prompts[owners[i]], targets[i])] = row.clone()

    def logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]],
        owners: Sequence[int],
        pad_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same result as `shared_prompt_logprobs(model, prompts, targets, owners, pad_id)`."""
        head, prompts, targets = SharedHead.split(prompts, targets)
        prompts = [tuple(p) for p in prompts]
        targets = [tuple(t) for t in targets]
        owners = list(owners)
        self._fill(prompts, targets, owners)
        fed = [self._targets[(prompts[owners[i]], t)] for i, t in enumerate(targets)]
        packed = PackedRows.build([len(p) for p in prompts], [f.shape[0] for f in fed], owners)
        prompt_states = [self._prompts[p] for p in prompts]
        hidden = prompt_states[0].new_zeros(len(prompts), packed.width, prompt_states[0].shape[-1])
        for b, states in enumerate(prompt_states):
            hidden[b, : states.shape[0]] = states
        for i, start in enumerate(packed.starts):
            hidden[owners[i], start : start + fed[i].shape[0]] = fed[i]
        hidden = self._layers(hidden, packed, self.k, len(self.decoder.layers))

        # Which column predicts each scored token: a prompt's last len(head) + 1 columns predict
        # the head's tokens, then the first token of each of its targets; a target's fed tokens
        # predict the rest of it.
        head_columns = [
            [length - 1 - len(head) + j for j in range(len(head))]
            for length in packed.prompt_lengths
        ]
        target_columns = []
        for i, start in enumerate(packed.starts):
            last_prompt = packed.prompt_lengths[owners[i]] - 1
            target_columns.append([last_prompt] + list(range(start, start + fed[i].shape[0])))
        lm_head = self.model.get_output_embeddings()
        head_logprobs, _ = _scored(
            lm_head, self.decoder.norm, hidden, head_columns, range(len(prompts)),
            head.labels(len(prompts)),
        )  # fmt: skip
        logprobs, mask = _scored(
            lm_head, self.decoder.norm, hidden, target_columns, owners, target_labels(targets)
        )
        return head.join(
            head_logprobs, torch.as_tensor(owners, device=hidden.device), logprobs, mask
        )


def _scored(lm_head, norm, hidden, columns, rows, labels):
    """([N, L] log-probs, mask) of `labels` [N, L] (left-aligned, -100 after), label j of item i
    predicted by hidden[rows[i], columns[i][j]]: norm and LM head only at those positions."""
    width = hidden.shape[1]
    flat = [row * width + col for row, cols in zip(rows, columns, strict=True) for col in cols]
    chosen = hidden.reshape(-1, hidden.shape[-1])[
        torch.as_tensor(flat, dtype=torch.long, device=hidden.device)
    ]
    labels = labels.to(hidden.device)
    mask = labels != -100
    logprobs = token_logprobs(lm_head, norm(chosen), labels[mask])
    zeros = torch.zeros(labels.shape, dtype=logprobs.dtype, device=hidden.device)
    return zeros.masked_scatter(mask, logprobs), mask
