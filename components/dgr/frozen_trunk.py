"""Stage-2 passage scores with the frozen lower layers run once per (query, identifier) row.

In `top_layers` mode only the last N decoder layers and the final norm train; the token
embeddings, the layers below and the LM head (tied to the embeddings) stay frozen. The states
that enter the first trainable layer are then a fixed function of the token ids. Stage 2 scores
the same (query prompt, passage identifier) rows every epoch, so `FrozenTrunk` computes those
states once, on the step that first needs them, and every later step runs only the trainable
layers: with 6 of 30 layers trainable a step costs 1.7x less on CPU (the backward pass and the
LM head stay; `scripts/bench_dgr_stage2.py`).

The scores are those of `retriever.shared_prompt_logprobs` (the prompt runs once, its key/value
cache is expanded to its identifiers), split at the first trainable layer:

    h_k(prompt), h_k(identifier | prompt)     layers 0..k-1, no gradients, cached per row
    log p(identifier | prompt)                layers k..L-1 + norm + LM head, with gradients

Only decoders whose layers all attend over the whole sequence (Llama, Qwen2 without sliding
windows) are split; for anything else `FrozenTrunk.for_model` returns None and the caller keeps
the one-piece path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from components.dgr.retriever import label_logprobs, target_labels
from components.models.reranker import left_pad

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
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: DynamicCache,
    start: int,
    stop: int,
) -> torch.Tensor:
    """Decoder layers start..stop-1 over `hidden`, as the decoder's own forward runs them; the
    mask is sized from layer `start`'s cache entry, the one these layers extend."""
    mask = create_causal_mask(
        config=decoder.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        past_key_values=cache,
        position_ids=position_ids,
        layer_idx=start,
    )
    position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)
    for layer in decoder.layers[start:stop]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
    return hidden


def _pad_states(rows: Sequence[torch.Tensor], left: bool) -> torch.Tensor:
    """[N, T, H] from rows of [t_i, H], zeros in the padding (masked out by the caller)."""
    width = max(row.shape[0] for row in rows)
    out = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
    for i, row in enumerate(rows):
        n = row.shape[0]
        if n:
            if left:
                out[i, width - n :] = row
            else:
                out[i, :n] = row
    return out


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
        if k is None or k == 0 or dropout > 0 or not _full_attention_only(config):
            return None
        return cls(model, k)

    @property
    def cached_rows(self) -> int:
        return len(self._targets)

    @torch.no_grad()
    def _fill(self, prompts: list[Ids], targets: list[Ids], owners: list[int], pad_id: int):
        """Run layers 0..k-1 over the rows not cached yet (their prompts once each)."""
        missing = [i for i, t in enumerate(targets) if (prompts[owners[i]], t) not in self._targets]
        if not missing:
            return
        needed = sorted({owners[i] for i in missing})
        slot = {b: n for n, b in enumerate(needed)}
        device = next(self.model.parameters()).device
        input_ids, attention_mask = left_pad([list(prompts[b]) for b in needed], pad_id)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        cache = DynamicCache(config=self.model.config)
        hidden = _run_layers(
            self.decoder,
            self.decoder.embed_tokens(input_ids),
            attention_mask,
            (attention_mask.cumsum(-1) - 1).clamp_min(0),
            cache,
            0,
            self.k,
        )
        for b, row, mask in zip(needed, hidden, attention_mask.bool(), strict=True):
            self._prompts[prompts[b]] = row[mask].clone()
        owner = torch.as_tensor([slot[owners[i]] for i in missing], device=device)
        # As in `shared_prompt_logprobs`: every column but the last is fed (a shorter target's
        # last token too, unscored: causal attention keeps it out of the states kept below).
        fed = target_labels([targets[i] for i in missing])[:, :-1]
        feed_mask = fed != -100
        if fed.shape[1] == 0:  # one-token targets: nothing is fed after the prompt
            states = hidden.new_zeros(len(missing), 0, hidden.shape[-1])
        else:
            cache.reorder_cache(owner)
            lengths = attention_mask.sum(-1).index_select(0, owner)
            states = _run_layers(
                self.decoder,
                self.decoder.embed_tokens(torch.where(feed_mask, fed, pad_id).to(device)),
                torch.cat([attention_mask.index_select(0, owner), feed_mask.long().to(device)], 1),
                lengths[:, None] + torch.arange(fed.shape[1], device=device),
                cache,
                0,
                self.k,
            )
        for n, i in enumerate(missing):  # the states of all but the target's last token
            key = (prompts[owners[i]], targets[i])
            self._targets[key] = states[n, : len(targets[i]) - 1].clone()

    def logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]],
        owners: Sequence[int],
        pad_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same result as `shared_prompt_logprobs(model, prompts, targets, owners, pad_id)`."""
        prompts = [tuple(p) for p in prompts]
        targets = [tuple(t) for t in targets]
        owners = list(owners)
        self._fill(prompts, targets, owners, pad_id)
        device = next(self.model.parameters()).device
        layers = len(self.decoder.layers)
        prompt_states = [self._prompts[p] for p in prompts]
        attention_mask = torch.zeros(len(prompts), max(s.shape[0] for s in prompt_states),
                                     dtype=torch.long, device=device)  # fmt: skip
        for i, states in enumerate(prompt_states):
            attention_mask[i, attention_mask.shape[1] - states.shape[0] :] = 1
        cache = DynamicCache(config=self.model.config)
        hidden = _run_layers(
            self.decoder,
            _pad_states(prompt_states, left=True),
            attention_mask,
            (attention_mask.cumsum(-1) - 1).clamp_min(0),
            cache,
            self.k,
            layers,
        )
        owner = torch.as_tensor(owners, dtype=torch.long, device=device)
        last = self.decoder.norm(hidden[:, -1:]).index_select(0, owner)
        labels = target_labels(targets)
        width = labels.shape[1]
        finals = [last]
        if width > 1:
            cache.reorder_cache(owner)
            fed = [self._targets[(prompts[owners[i]], t)] for i, t in enumerate(targets)]
            feed_mask = (labels[:, :-1] != -100).long().to(device)
            lengths = attention_mask.sum(-1).index_select(0, owner)
            hidden = _run_layers(
                self.decoder,
                _pad_states(fed, left=False),
                torch.cat([attention_mask.index_select(0, owner), feed_mask], dim=1),
                lengths[:, None] + torch.arange(width - 1, device=device),
                cache,
                self.k,
                layers,
            )
            finals.append(self.decoder.norm(hidden))
        logits = self.model.get_output_embeddings()(torch.cat(finals, dim=1)).float()
        return label_logprobs(logits, labels.to(device))
