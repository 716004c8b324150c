"""Packed rows: several token segments in one row, each attending only to its ancestors.

Generative retrieval trains on short rows that share long parts: every prompt starts with the
same system text, and stage 2 puts m identifiers behind each query's prompt. Padding such rows
to one width and running each in full repeats the shared tokens and computes the padding. A
`Packing` lays segments out in rows instead: a segment attends to the segments on its parent
chain and causally to itself, and its positions continue its parent's, so every token gets
exactly the states it would get in its own unpacked row (`[ancestors..., segment]`), while each
shared token runs once. Padding only closes a row.

    segments   prefix | query 1 | query 2 | ...          (stage 1: one row)
    parents    -        prefix    prefix

    segments   prompt 1 | identifier 1 | identifier 2 | ...   (stage 2: a row per prompt)
    parents    -          prompt 1       prompt 1

Only decoders whose layers all attend over the whole sequence (Llama, Qwen2 without sliding
windows) with SDPA or eager attention run packed (`packable`); callers keep the model's own
forward for anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from components.dgr.scoring import common_prefix, target_labels, token_logprobs


def packable(model: nn.Module) -> bool:
    """Whether `model` can run packed rows: full attention in every layer, an attention
    implementation that takes an explicit 4-D mask, and no dropout (a packed row must give the
    states of the unpacked one)."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or []
    full_attention = all(kind == "full_attention" for kind in layer_types) and not getattr(
        config, "use_sliding_window", False
    )
    dropout = getattr(config, "attention_dropout", 0.0) or 0.0
    implementation = getattr(config, "_attn_implementation", None)
    return full_attention and dropout == 0 and implementation in ("sdpa", "eager")


@dataclass
class Packing:
    """Where each segment sits (row, first column), the position ids and the attention mask."""

    rows: list[int]
    starts: list[int]
    lengths: list[int]
    position_ids: torch.Tensor  # [R, T]
    allowed: torch.Tensor  # [R, 1, T, T] bool: True where a query position may attend

    @classmethod
    def build(
        cls,
        lengths: Sequence[int],
        parents: Sequence[int | None],
        rows: Sequence[int] | None = None,
    ) -> Packing:
        """Segments in order, each after the earlier ones of its row (default: all in row 0);
        a parent must be an earlier segment of the same row."""
        rows = list(rows) if rows is not None else [0] * len(lengths)
        ends: dict[int, int] = {}
        starts, first_positions = [], []
        for s, (length, parent, row) in enumerate(zip(lengths, parents, rows, strict=True)):
            if parent is not None and not (parent < s and rows[parent] == row):
                raise ValueError(f"segment {s}: parent {parent} is not earlier in row {row}")
            starts.append(ends.get(row, 0))
            ends[row] = starts[-1] + length
            first_positions.append(
                0 if parent is None else first_positions[parent] + lengths[parent]
            )
        width = max(ends.values(), default=0)
        position_ids = torch.zeros(max(rows, default=-1) + 1, width, dtype=torch.long)
        allowed = torch.zeros(position_ids.shape[0], width, width, dtype=torch.bool)
        for s, (start, length, row) in enumerate(zip(starts, lengths, rows, strict=True)):
            span = slice(start, start + length)
            position_ids[row, span] = first_positions[s] + torch.arange(length)
            allowed[row, span, span] = torch.ones(length, length, dtype=torch.bool).tril()
            parent = parents[s]
            while parent is not None:
                allowed[row, span, starts[parent] : starts[parent] + lengths[parent]] = True
                parent = parents[parent]
        for row in range(position_ids.shape[0]):  # padding attends to itself (never all-masked)
            pads = torch.arange(ends.get(row, 0), width)
            allowed[row, pads, pads] = True
        return cls(rows, starts, list(lengths), position_ids, allowed[:, None])

    @property
    def width(self) -> int:
        return self.position_ids.shape[1]

    def last_column(self, segment: int) -> int:
        return self.starts[segment] + self.lengths[segment] - 1

    def place(self, segments: Sequence[torch.Tensor], fill: torch.Tensor) -> torch.Tensor:
        """[R, T, ...] with each segment's [length, ...] values at its place, `fill` elsewhere."""
        out = fill.expand(self.position_ids.shape + fill.shape).clone()
        for row, start, values in zip(self.rows, self.starts, segments, strict=True):
            out[row, start : start + values.shape[0]] = values
        return out

    def attention_mask(self, implementation: str, dtype: torch.dtype) -> torch.Tensor:
        """The mask in the form the attention implementation takes (SDPA: bool; eager: additive)."""
        if implementation == "sdpa":
            return self.allowed
        return torch.zeros(self.allowed.shape, dtype=dtype).masked_fill(
            ~self.allowed, torch.finfo(dtype).min
        )


def run_layers(
    model: nn.Module, hidden: torch.Tensor, packing: Packing, start: int, stop: int
) -> torch.Tensor:
    """Decoder layers start..stop-1 of `model` over packed `hidden` [R, T, H]."""
    decoder = model.get_decoder()
    device = hidden.device
    mask = packing.attention_mask(model.config._attn_implementation, hidden.dtype).to(device)
    position_ids = packing.position_ids.to(device)
    position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)
    for layer in decoder.layers[start:stop]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
        )
    return hidden


def scored_logprobs(
    model: nn.Module,
    hidden: torch.Tensor,
    rows: Sequence[int],
    columns: Sequence[Sequence[int]],
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, L] log-probs, mask) of `labels` [N, L] (left-aligned, -100 after): label j of item i
    is predicted by the last layer's state hidden[rows[i], columns[i][j]]. The final norm and
    the LM head run only at those positions."""
    width = hidden.shape[1]
    flat = [row * width + col for row, cols in zip(rows, columns, strict=True) for col in cols]
    index = torch.as_tensor(flat, dtype=torch.long, device=hidden.device)
    chosen = model.get_decoder().norm(hidden.reshape(-1, hidden.shape[-1])[index])
    labels = labels.to(hidden.device)
    mask = labels != -100
    if index.numel() != int(mask.sum()):
        raise ValueError(f"{index.numel()} scoring positions for {int(mask.sum())} labels")
    logprobs = token_logprobs(model.get_output_embeddings(), chosen, labels[mask])
    zeros = torch.zeros(labels.shape, dtype=logprobs.dtype, device=hidden.device)
    return zeros.masked_scatter(mask, logprobs), mask


def packed_target_logprobs(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    max_row_tokens: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log p of every token of targets[i] given prompts[i]: ([N, L] log-probs,
    mask), targets left-aligned; the values of `scoring.target_logprobs`.

    Packed rows: the prompts' common prefix (the system text) once per row, then each example's
    prompt rest and target behind it. Each prompt keeps its last token, which predicts the
    target's first. A row takes examples until `max_row_tokens` (attention over a row grows
    with its square; one example longer than that gets a row of its own).
    """
    shared = common_prefix(prompts)
    root = list(prompts[0][:shared])
    segments: list[tuple[list[int], int | None, int]] = []  # (tokens, parent, row)
    example_segments = []
    row, used, row_root = -1, max_row_tokens, None
    for prompt, target in zip(prompts, targets, strict=True):
        example = list(prompt[shared:]) + list(target[:-1])
        if row < 0 or used + len(example) > max_row_tokens:
            row, used, row_root = row + 1, len(root), None
            if root:
                row_root = len(segments)
                segments.append((root, None, row))
        example_segments.append(len(segments))
        segments.append((example, row_root, row))
        used += len(example)
    tokens, parents, rows = zip(*segments, strict=True)
    packing = Packing.build([len(t) for t in tokens], parents, rows)
    device = next(model.parameters()).device
    ids = [torch.as_tensor(t, dtype=torch.long) for t in tokens]
    input_ids = packing.place(ids, torch.tensor(0)).to(device)
    decoder = model.get_decoder()
    hidden = run_layers(model, decoder.embed_tokens(input_ids), packing, 0, len(decoder.layers))
    columns = []
    for segment, prompt in zip(example_segments, prompts, strict=True):
        first = packing.starts[segment] + len(prompt) - shared - 1  # the prompt's last token
        columns.append(list(range(first, packing.last_column(segment) + 1)))
    example_rows = [rows[segment] for segment in example_segments]
    return scored_logprobs(model, hidden, example_rows, columns, target_labels(targets))
