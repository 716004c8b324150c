"""bf16 decoder layers with an fp32 LM head, for training and decoding the generative retriever.

On hardware with native bf16 (AVX512-BF16 or AMX CPUs, recent GPUs) the decoder layers run
under bf16 autocast, as the teacher's do. Each layer is wrapped on its own, so the same
precision holds whether the layers run inside the model's forward (generate) or one by one
over packed rows (`packing.run_layers`), and everything outside them stays in the weights'
fp32: the embeddings, the residual stream between layers, the final norm and the LM head. An
identifier's score is a sum of log-softmaxes over a 49k vocabulary; bf16 logits (8
significant bits: a logit of 16 is rounded by up to 0.06, on every token) would move it by
more than the gaps between close beams. Where native bf16 is missing, autocast would be
emulated and slower than fp32, so the model is left as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from components.llm.precision import bf16_available

_MARK = "_bf16_layers"


def bf16_layers(model: nn.Module, enabled: bool = True) -> bool:
    """Run every decoder layer of `model` under bf16 autocast where its device has native
    bf16 and `enabled`; returns whether it now does. Idempotent; the weights are untouched, so
    checkpoints and `save_pretrained` are as in fp32."""
    device = next(model.parameters()).device
    if not (enabled and bf16_available(device)):
        return False
    for layer in model.get_decoder().layers:
        if not getattr(layer, _MARK, False):
            # An instance attribute shadows the class's forward; nn.Module.__call__ finds it.
            autocast = torch.autocast(device.type, dtype=torch.bfloat16)
            layer.forward = autocast(layer.forward)
            setattr(layer, _MARK, True)
    return True


def runs_bf16(model: nn.Module) -> bool:
    """Whether `bf16_layers` is in effect for `model`."""
    return all(getattr(layer, _MARK, False) for layer in model.get_decoder().layers)
