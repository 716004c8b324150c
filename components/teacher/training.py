"""Teacher fine-tuning on a real DeepSpeed engine: listwise CE over (positive + hard negatives).

One entry point, `teacher`. It runs the same in one process without a launcher (the
distributed env vars are filled in) and under `torchrun` / `deepspeed` with several processes:
every optimizer step consumes the same global batch of groups, split across ranks and then into
micro-batches, so the loss curve does not depend on the process count.

Backends: CPU -> fp32 weights, gloo (bf16 only as autocast in the forward, where the CPU has
native bf16); CUDA -> DeepSpeed bf16 and NCCL.

Resuming: a checkpoint (every `checkpoint_every` steps) holds the DeepSpeed state (weights,
optimizer, LR scheduler, step count) plus the data position (epoch, step within epoch) and each
rank's RNG states. Data order is a function of (seed, epoch) alone, so a restarted run picks up
the very batch an uninterrupted run would have seen next.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from components.atomic import atomic_path
from components.config import BiEncoderParams, DGRParams, TeacherParams
from components.llm.base_model import load_causal_lm, load_tokenizer
from components.llm.padding import left_pad
from components.llm.precision import bf16_available
from components.llm.prompts import PromptBuilder, PromptTemplate, resolve_answer_token_ids
from components.settings import repo_root
from components.teacher.data import TrainingGroup, global_batches, shard_for_rank
from components.teacher.loss import listwise_ce
from components.teacher.reranker import AnswerTokens, answer_logits, yes_no_score
from components.training.loop import (
    rng_state,
    seed_everything,
    set_rng_state,
    warmup_linear_decay,
)

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


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    completed: bool  # False when stopped early by `stop_after_steps`
    output_dir: Path | None
    losses: list[float] = field(default_factory=list)  # this invocation's steps only


def isolate_extension_cache() -> None:
    """Give this Python environment its own DeepSpeed JIT-op cache.

    On CPU DeepSpeed JIT-builds a comm op into TORCH_EXTENSIONS_DIR, by default one folder per
    Python version shared by every virtualenv on the machine. A build from another venv (a CI
    copy of the repo) points the shared build at other torch headers, and the next load here
    rebuilds it (70-130 s). One folder per interpreter prefix stops that ping-pong.
    """
    digest = hashlib.sha1(sys.prefix.encode()).hexdigest()[:10]
    default = Path.home() / ".cache" / "torch_extensions" / f"{Path(sys.prefix).name}-{digest}"
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(default))


def ensure_distributed_env() -> None:
    """Fill in the env vars a launcher would set, so one process works without one."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:  # ask the OS for a free port
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }.items():
        os.environ.setdefault(key, value)


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


def build_deepspeed_config(
    params: TeacherParams, world_size: int, cuda: bool, grad_accum: int,
    config_path: str | Path = DEFAULT_DEEPSPEED_CONFIG,
) -> dict:
    """The JSON config with the run's values filled in (the keys its `_comment` lists)."""
    path = Path(config_path)
    if not path.is_absolute():
        path = repo_root() / path
    config = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    config["train_micro_batch_size_per_gpu"] = params.micro_batch_groups
    config["gradient_accumulation_steps"] = grad_accum
    config["train_batch_size"] = params.micro_batch_groups * grad_accum * world_size
    optimizer = config.setdefault("optimizer", {"type": "AdamW", "params": {"torch_adam": True}})
    optimizer["params"].update(lr=params.lr, weight_decay=params.weight_decay)
    # The schedule is a client LambdaLR (see `warmup_linear_decay`): DeepSpeed's WarmupDecayLR
    # spends the first step at lr=0 and forces >= 2 warmup steps.
    config.pop("scheduler", None)
    config.setdefault("zero_optimization", {})["stage"] = params.zero_stage
    config["bf16"] = {"enabled": bool(cuda and params.bf16)}
    return config


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
) -> TrainResult:
    """Fine-tune the reranker at `base_model_dir` on `groups`; save it to `output_dir`.

    Resumes from `checkpoint_dir` when it holds a checkpoint. `on_step` is called on rank 0
    after every optimizer step. `stop_after_steps` ends this invocation after that many steps
    with a checkpoint and no final model (time-boxed runs; the resume tests). On completion,
    `output_dir` receives a plain transformers checkpoint (LoRA merged) + tokenizer, atomically.
    """
    isolate_extension_cache()
    import deepspeed  # heavy import (~5 s); keep it out of module import time

    ensure_distributed_env()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    per_step_local = params.global_batch_groups // world
    if params.global_batch_groups % (params.micro_batch_groups * world):
        raise ValueError(
            f"global_batch_groups={params.global_batch_groups} must be a multiple of "
            f"micro_batch_groups x world_size = {params.micro_batch_groups} x {world}"
        )
    grad_accum = per_step_local // params.micro_batch_groups
    steps_per_epoch = len(groups) // params.global_batch_groups
    if steps_per_epoch == 0:
        raise ValueError(f"{len(groups)} groups < one global batch ({params.global_batch_groups})")
    total_steps = params.max_steps
    warmup_steps = int(params.warmup_ratio * total_steps)
    identity = _run_identity(params, seed, deepspeed_config)

    seed_everything(seed)  # identical LoRA init on every rank
    tokenizer = load_tokenizer(base_model_dir)
    answer_tokens = resolve_answer_token_ids(tokenizer, template)
    prompts = PromptBuilder(template, tokenizer, params.max_doc_tokens)
    lm = apply_train_mode(load_causal_lm(base_model_dir), params)
    lm.train()
    autocast = bool(params.bf16 and not cuda and bf16_available(device))
    module = PairScoringModule(lm, answer_tokens, autocast)
    trainable = [p for p in module.parameters() if p.requires_grad]

    config = build_deepspeed_config(params, world, cuda, grad_accum, deepspeed_config)
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=trainable,
        config=config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_linear_decay(total_steps, warmup_steps)
        ),
    )

    checkpoint_dir = Path(checkpoint_dir)
    epoch, step_in_epoch = 0, 0
    if (checkpoint_dir / "latest").is_file():
        load_path, client = engine.load_checkpoint(str(checkpoint_dir))
        if load_path is None:
            raise RuntimeError(f"could not load the checkpoint in {checkpoint_dir}")
        _check_same_run(client.get("params", {}), identity, checkpoint_dir)
        epoch, step_in_epoch = client["epoch"], client["step_in_epoch"]
        set_rng_state(
            torch.load(Path(load_path).parent / f"rng_rank{rank}.pt", weights_only=True)
        )
        if rank == 0:
            log.info("resumed from %s at step %d", load_path, engine.global_steps)

    losses: list[float] = []
    started = time.perf_counter()
    batches, batches_epoch = [], None
    while engine.global_steps < total_steps:
        if batches_epoch != epoch:  # the order is a function of (seed, epoch) only
            batches = global_batches(len(groups), epoch, seed, params.global_batch_groups)
            batches_epoch = epoch
        t0 = time.perf_counter()
        lr = engine.get_lr()[0]
        local = shard_for_rank(batches[step_in_epoch], rank, world)
        totals = torch.zeros(2, dtype=torch.float64)  # (sum of micro-batch losses, tokens)
        for m in range(0, len(local), params.micro_batch_groups):
            micro = [groups[i] for i in local[m : m + params.micro_batch_groups]]
            pairs = [pair for group in micro for pair in group.pairs()]
            input_ids, mask = left_pad(prompts.encode_pairs(pairs), tokenizer.pad_token_id)
            logits = engine(input_ids.to(device), mask.to(device))
            loss = listwise_ce(yes_no_score(logits).view(len(micro), -1), params.temperature)
            engine.backward(loss)  # DeepSpeed scales by 1/grad_accum and steps at the boundary
            engine.step()
            totals += torch.tensor([loss.item(), mask.sum().item()], dtype=torch.float64)
        totals = totals.to(device)  # NCCL reduces device tensors only; gloo takes either
        torch.distributed.all_reduce(totals)  # sum over ranks
        totals = totals.cpu()
        step_loss = totals[0].item() / (grad_accum * world)
        losses.append(step_loss)
        step_epoch = epoch
        step_in_epoch += 1
        if step_in_epoch == len(batches):
            epoch, step_in_epoch = epoch + 1, 0
        if rank == 0 and on_step is not None:
            on_step(
                StepMetrics(
                    step=engine.global_steps,
                    total_steps=total_steps,
                    epoch=step_epoch,
                    loss=step_loss,
                    lr=lr,
                    tokens_per_s=totals[1].item() / (time.perf_counter() - t0),
                    elapsed_s=time.perf_counter() - started,
                )
            )
        stop = stop_after_steps is not None and len(losses) >= stop_after_steps
        done = engine.global_steps >= total_steps
        if engine.global_steps % params.checkpoint_every == 0 or (stop and not done):
            _save_checkpoint(engine, checkpoint_dir, epoch, step_in_epoch, identity,
                             params.keep_checkpoints, rank)
        if stop:
            break

    completed = engine.global_steps >= total_steps
    out = None
    if completed:
        out = _save_final_model(engine, base_model_dir, params, answer_tokens, Path(output_dir))
    return TrainResult(
        steps=engine.global_steps,
        total_steps=total_steps,
        completed=completed,
        output_dir=out,
        losses=losses,
    )


def _save_checkpoint(engine, checkpoint_dir: Path, epoch, step_in_epoch, identity: dict,
                     keep: int, rank) -> None:
    tag = f"step{engine.global_steps:08d}"
    tag_dir = checkpoint_dir / tag
    tag_dir.mkdir(parents=True, exist_ok=True)
    # RNG first: DeepSpeed writes `latest` last, so a checkpoint that `latest` names is complete.
    torch.save(rng_state(), tag_dir / f"rng_rank{rank}.pt")
    client = {"epoch": epoch, "step_in_epoch": step_in_epoch, "params": identity}
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client)
    if rank == 0:
        tags = sorted(p for p in checkpoint_dir.glob("step*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()


# Knobs that may change between a run and its resumption without changing what is trained.
_RESUMABLE_CHANGES = {"checkpoint_every", "keep_checkpoints"}


def _run_identity(params: TeacherParams, seed: int, deepspeed_config: str | Path) -> dict:
    """What a checkpoint must have been written with to be resumed."""
    values = {**params.model_dump(), "seed": seed, "deepspeed_config": str(deepspeed_config)}
    return {k: v for k, v in values.items() if k not in _RESUMABLE_CHANGES}


def _check_same_run(saved: dict, current: dict, checkpoint_dir: Path) -> None:
    """Refuse to resume a checkpoint written with different training params."""
    changed = sorted(k for k in current.keys() | saved.keys() if current.get(k) != saved.get(k))
    if changed:
        raise ValueError(
            f"checkpoint in {checkpoint_dir} was written with different params ({changed}); "
            "delete it or restore those values"
        )


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
