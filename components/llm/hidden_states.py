"""Hidden states of a decoder-only LLM: what its final norm reads and writes, and the states after
chosen decoder layers from a pass that stops once the deepest of them has run.

transformers' `hidden_states` holds every layer's output, the last one already after the final
norm; the last layer's output BEFORE the norm (where a residual update of the answer state must
live) is captured by a hook on the norm. Position ids are computed from the attention mask, as
`components.teacher.reranker.answer_logits` computes them, so a left-padded row gets the very
states its unpadded prompt gets from the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def final_norm(model: nn.Module) -> nn.Module:
    norm = getattr(model.get_decoder(), "norm", None)
    if norm is None:
        raise ValueError(f"{type(model).__name__} has no final norm at .get_decoder().norm")
    return norm


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def final_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    autocast_bf16: bool,
    layers: Sequence[int] = (),
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
    """(pre-norm, post-norm) final states at every position, [B, T, H] each, fp32, and the
    states of the decoder `layers` asked for (0 = the embeddings; BEFORE any norm).

    Position ids from the mask by default, as `reranker.answer_logits` computes them: the query
    state must be the very state the teacher computes for the same prompt. With
    `past_key_values` (a cached prompt prefix; consumed) `mask` also covers the prefix.
    """
    decoder = model.get_decoder()
    captured: list[torch.Tensor] = []
    hook = final_norm(model).register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    if position_ids is None:
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            out = decoder(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=past_key_values is not None,
                output_hidden_states=bool(layers),
            )
    finally:
        hook.remove()
    states = {layer: out.hidden_states[layer] for layer in layers}
    return captured[0].float(), out.last_hidden_state.float(), states


class _DeepEnough(Exception):
    """Raised by a layer hook once the deepest layer a pass needs has run."""


def layer_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    layers: Sequence[int],
    autocast_bf16: bool,
) -> dict[int, torch.Tensor]:
    """The states after decoder layers `layers` (each >= 1; what `hidden_states[layer]` holds),
    [B, T, H], from a pass that stops after the deepest of them: layer 4 of 30 costs 4/30 of a
    full pass. Position ids from the mask, as `final_states`."""
    decoder, deepest, captured = model.get_decoder(), max(layers), {}

    def capture(layer: int):
        def hook(_module, _args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == deepest:
                raise _DeepEnough

        return hook

    def module(layer: int) -> nn.Module:
        # As in `hidden_states`, the last layer's entry is the state after the final norm.
        return final_norm(model) if layer == len(decoder.layers) else decoder.layers[layer - 1]

    handles = [module(layer).register_forward_hook(capture(layer)) for layer in layers]
    try:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            decoder(input_ids=input_ids, attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)  # fmt: skip
    except _DeepEnough:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured
