"""Teacher fine-tuning on the shared DeepSpeed loop: listwise CE over (positive + hard negatives).

One entry point, `train_teacher`. It runs the same in one process without a launcher and under
`torchrun` / `deepspeed` with several processes: every optimizer step consumes the same global
batch of groups, split across ranks and then into micro-batches (`components.training.loop`),
so the loss curve does not depend on the process count.

Backends: CPU -> fp32 weights, gloo (bf16 only as autocast in the forward, where the CPU has
native bf16); CUDA -> DeepSpeed bf16 and NCCL. ZeRO options come from
`configs/deepspeed/teacher.json`.

Resuming: checkpoints are the loop's (`components.training.checkpoint`): the engine state plus
the data position and each rank's RNG states. Data order is a function of (seed, epoch) alone,
so a restarted run picks up the very batch an uninterrupted run would have seen next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from components.atomic import atomic_path
from components.config import BiEncoderParams, DGRParams, TeacherParams
from components.device import current_device
from components.llm.base_model import load_causal_lm, load_tokenizer
from components.llm.padding import left_pad
from components.llm.precision import bf16_available
from components.llm.prompts import PromptBuilder, PromptTemplate, resolve_answer_token_ids
from components.teacher.data import TrainingGroup, global_batches
from components.teacher.dev_curve import DevCurve, DevSample
from components.teacher.loss import listwise_ce
from components.teacher.reranker import AnswerTokens, answer_logits, yes_no_score
from components.training import loop
from components.training.engine import read_config

log = logging.getLogger(__name__)

# The DeepSpeed JSON the run's values are filled into; relative paths are from the repo root.
DEFAULT_DEEPSPEED_CONFIG = Path("configs/deepspeed/teacher.json")


@dataclass
class StepMetrics:
    step: int  # optimizer steps done, 1-based
    total_steps: int
    epoch: int  # the epoch this step belonged to (0-based)
    loss: float  # mean listwise CE over the global batch
    lr: float  # learning rate used for this step
    tokens_per_s: float  # non-padding tokens, all ranks, forward+backward+step
    elapsed_s: float
    dev: dict[str, float] = field(default_factory=dict)  # the dev curve's point, on its steps


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    completed: bool  # False when stopped early by `stop_after_steps`
    output_dir: Path | None
    losses: list[float] = field(default_factory=list)  # this invocation's steps only


class PairScoringModule(nn.Module):
    """What the DeepSpeed engine wraps: tokens in, answer-position (yes, no) logits out."""

    def __init__(self, lm: nn.Module, answer_tokens: AnswerTokens, autocast_bf16: bool):
        super().__init__()
        self.lm = lm
        self.answer_tokens = answer_tokens
        self.autocast_bf16 = autocast_bf16

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = answer_logits(
            self.lm, input_ids, attention_mask, self.answer_tokens, self.autocast_bf16
        )
        return out.answer_logits


def apply_train_mode(
    model: nn.Module, params: TeacherParams | DGRParams | BiEncoderParams
) -> nn.Module:
    """Choose what trains: LoRA adapters (teacher only), the top N layers, or everything."""
    if params.train_mode == "full":
        return model
    if params.train_mode == "top_layers":
        model.requires_grad_(False)
        decoder = model.get_decoder()
        # Embeddings stay frozen: they are tied to the 49k-row LM head, and training them would
        # cost more than the layers themselves.
        for layer in decoder.layers[-params.top_layers :]:
            layer.requires_grad_(True)
        decoder.norm.requires_grad_(True)
        return model
    if params.train_mode == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=params.lora_r,
            lora_alpha=params.lora_alpha,
            lora_dropout=params.lora_dropout,
            target_modules=list(params.lora_target_modules),
            bias="none",
        )
        return get_peft_model(model, config)
    raise ValueError(f"train_mode must be lora, top_layers or full, got {params.train_mode!r}")


def loop_settings(params: TeacherParams, cuda: bool) -> loop.LoopSettings:
    """The loop's view of the `teacher` section; gradient clipping is the DeepSpeed JSON's."""
    return loop.LoopSettings(
        lr=params.lr,
        weight_decay=params.weight_decay,
        batch_size=params.global_batch_groups,
        micro_batch_size=params.micro_batch_groups,
        max_steps=params.max_steps,
        warmup_ratio=params.warmup_ratio,
        grad_clip=None,
        checkpoint_every=params.checkpoint_every,
        keep_checkpoints=params.keep_checkpoints,
        zero_stage=params.zero_stage,
        bf16=bool(cuda and params.bf16),
    )


class ListwiseTask:
    """Training groups, tokenised per micro-batch, and their listwise CE."""

    def __init__(self, groups: Sequence[TrainingGroup], prompts: PromptBuilder, pad_id: int,
                 params: TeacherParams, seed: int):
        self.groups, self.prompts, self.pad_id = groups, prompts, pad_id
        self.params, self.seed = params, seed

    def __len__(self) -> int:
        return len(self.groups)

    def batches(self, model: nn.Module, epoch: int) -> list[list[int]]:
        # Whole global batches only (the last partial one is dropped): every step the same size.
        return global_batches(len(self.groups), epoch, self.seed, self.params.global_batch_groups)

    def loss(self, model: nn.Module, batch: list[int], epoch: int):
        micro = [self.groups[i] for i in batch]
        pairs = [pair for group in micro for pair in group.pairs()]
        input_ids, mask = left_pad(self.prompts.encode_pairs(pairs), self.pad_id)
        device = next(model.parameters()).device
        logits = model(input_ids.to(device), mask.to(device))
        loss = listwise_ce(yes_no_score(logits).view(len(micro), -1), self.params.temperature)
        return loss, {"tokens": float(mask.sum())}


def train_teacher(
    base_model_dir: str | Path,
    groups: Sequence[TrainingGroup],
    template: PromptTemplate,
    params: TeacherParams,
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    on_step: Callable[[StepMetrics], None] | None = None,
    stop_after_steps: int | None = None,
    *,
    seed: int,
    deepspeed_config: str | Path = DEFAULT_DEEPSPEED_CONFIG,
    dev_sample: DevSample | None = None,
) -> TrainResult:
    """Fine-tune the reranker at `base_model_dir` on `groups`; save it to `output_dir`.

    Resumes from `checkpoint_dir` when it holds a checkpoint. `on_step` is called on rank 0
    after every optimizer step. `stop_after_steps` ends this invocation after that many steps
    with a checkpoint and no final model (time-boxed runs; the resume tests). The model
    reranks `dev_sample` (`components.teacher.dev_curve`) every `params.curve_every` steps and
    after the last; its result reaches `on_step` as `StepMetrics.dev`. On completion,
    `output_dir` receives a plain transformers checkpoint (LoRA merged) + tokenizer, atomically.
    """
    if len(groups) < params.global_batch_groups:
        raise ValueError(f"{len(groups)} groups < one global batch ({params.global_batch_groups})")
    cuda = current_device().type == "cuda"
    loop.seed_everything(seed)  # identical LoRA init on every rank
    tokenizer = load_tokenizer(base_model_dir)
    answer_tokens = resolve_answer_token_ids(tokenizer, template)
    prompts = PromptBuilder(template, tokenizer, params.max_doc_tokens)
    lm = apply_train_mode(load_causal_lm(base_model_dir), params)
    autocast = bool(params.bf16 and not cuda and bf16_available(torch.device("cpu")))
    module = PairScoringModule(lm, answer_tokens, autocast)
    task = ListwiseTask(groups, prompts, tokenizer.pad_token_id, params, seed)
    dev_curve = (DevCurve(dev_sample, prompts, tokenizer.pad_token_id)
                 if dev_sample is not None and params.curve_every else None)

    def report(m: loop.StepMetrics) -> None:
        # parts["tokens"] is the mean over the step's micro-batches on all ranks.
        micro_batches = params.global_batch_groups // params.micro_batch_groups
        tokens = m.parts["tokens"] * micro_batches
        on_step(StepMetrics(step=m.step, total_steps=m.total_steps, epoch=m.epoch, loss=m.loss,
                            lr=m.lr, tokens_per_s=tokens / max(m.step_s, 1e-9),
                            elapsed_s=m.elapsed_s, dev=m.evaluation))

    result = loop.train(
        module, task, loop_settings(params, cuda), checkpoint_dir,
        report if on_step is not None else None, stop_after_steps, seed=seed,
        identity=_run_identity(params, seed, deepspeed_config),
        base_config=read_config(deepspeed_config), evaluate=dev_curve,
        eval_every=params.curve_every,
    )  # fmt: skip
    out = None
    if result.completed:
        out = _save_final_model(result.engine, base_model_dir, params, answer_tokens,
                                Path(output_dir))
    return TrainResult(steps=result.steps_done, total_steps=result.total_steps,
                       completed=result.completed, output_dir=out, losses=result.losses)


# Knobs that may change between a run and its resumption without changing what is trained.
_RESUMABLE_CHANGES = {"checkpoint_every", "keep_checkpoints", "curve_every", "curve_queries"}


def _run_identity(params: TeacherParams, seed: int, deepspeed_config: str | Path) -> dict:
    """What a checkpoint must have been written with to be resumed."""
    values = {**params.model_dump(), "seed": seed, "deepspeed_config": str(deepspeed_config)}
    return {k: v for k, v in values.items() if k not in _RESUMABLE_CHANGES}


def _full_state_dict(engine) -> dict | None:
    """The wrapped module's full state dict on rank 0 (None elsewhere); all ranks must call."""
    if engine.zero_optimization_partition_weights():  # ZeRO-3: weights are sharded
        return engine._zero3_consolidated_16bit_state_dict()
    if torch.distributed.get_rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def _save_final_model(engine, base_model_dir, params, answer_tokens, output_dir: Path) -> Path:
    """Rebuild the model on rank 0 from the base weights + trained state, merge LoRA, save.

    Rebuilding (rather than unwrapping the engine's module) gives the same code path for every
    ZeRO stage and leaves a plain fp32 `LlamaForCausalLM` that loads without peft or DeepSpeed.
    """
    state = _full_state_dict(engine)
    if torch.distributed.get_rank() == 0:
        lm = apply_train_mode(load_causal_lm(base_model_dir), params)
        module = PairScoringModule(lm, answer_tokens, autocast_bf16=False)
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        lm = module.lm.merge_and_unload() if params.train_mode == "lora" else module.lm
        with atomic_path(output_dir) as tmp:
            lm.save_pretrained(tmp, safe_serialization=True)
            load_tokenizer(base_model_dir).save_pretrained(tmp)
    torch.distributed.barrier()
    return output_dir
