"""The shared DeepSpeed training loop on a toy regression: a resumed run equals an uninterrupted
one (weights, losses, task-chosen batches, task state), a checkpoint of another run identity is
refused, frozen weights stay out of checkpoints, and the DeepSpeed config is filled in."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from components.training.checkpoint import LOOP_STATE
from components.training.engine import deepspeed_config, read_config
from components.training.loop import LoopSettings, seed_everything, shard_for_rank, train

torch.set_num_threads(2)


class Regressor(nn.Module):
    """A linear map with dropout (the RNG state matters) and a frozen, tied embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(4, 8)
        self.head = nn.Linear(8, 4, bias=False)
        self.head.weight = self.embed.weight  # tied, as an LLM's LM head
        self.embed.requires_grad_(False)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.2), nn.Linear(8, 1))

    def forward(self, x):
        return self.body(x).squeeze(-1)


class Toy:
    """y = x . w; `on_policy`: each epoch trains on the 12 examples the model fits worst."""

    def __init__(self, on_policy: bool = False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(20, 8, generator=g)
        self.y = self.x @ torch.randn(8, generator=g)
        self.on_policy = on_policy
        self.seen: list[list[int]] = []  # the task's own state: examples chosen per epoch

    def __len__(self):
        return len(self.x)

    def loss(self, model, batch, epoch):
        error = model(self.x[batch]) - self.y[batch]
        return (error**2).mean(), {"max_error": error.abs().max().item()}

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]

    def worst(self, model, epoch):
        with torch.no_grad():
            errors = (model(self.x) - self.y).abs()
        chosen = errors.argsort(descending=True)[:12].tolist()
        self.seen.append(chosen)
        return [chosen[i : i + 4] for i in range(0, 12, 4)]


def _run(folder, steps=9, stop_after=None, on_policy=False, lr=0.05, seed=0, task=None):
    seed_everything(0)
    model = Regressor()
    task = task or Toy(on_policy)
    if on_policy:
        task.batches = lambda model, epoch: task.worst(model, epoch)
    settings = LoopSettings(lr=lr, weight_decay=0.01, batch_size=4, max_steps=steps,
                            warmup_ratio=0.3, grad_clip=0.5, checkpoint_every=4)
    logged = []
    result = train(model, task, settings, folder, logged.append, stop_after, seed=seed,
                   identity={"lr": lr, "seed": seed, "views": ("a", "b")})
    return model, result, task, logged


@pytest.mark.parametrize("on_policy", [False, True], ids=["seeded_batches", "task_batches"])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, on_policy):
    whole, expected, whole_task, logged = _run(tmp_path / "a", on_policy=on_policy)
    assert expected.completed and [m.step for m in logged] == list(range(1, 10))
    assert expected.losses[-1] < expected.losses[0]
    assert set(logged[0].parts) == {"max_error"} and logged[0].lr > 0

    # Stopped mid-epoch (5 steps an epoch seeded, 3 task-chosen), then resumed.
    _, first, _, _ = _run(tmp_path / "b", stop_after=7, on_policy=on_policy)
    assert (first.steps_done, first.completed) == (7, False)
    assert (tmp_path / "b" / "latest").read_text() == "step00000007"
    resumed, second, task, _ = _run(tmp_path / "b", on_policy=on_policy)
    assert second.completed and len(second.losses) == 2
    assert first.losses + second.losses == pytest.approx(expected.losses, rel=1e-6)
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=0)
    assert task.seen == whole_task.seen  # the task's state came back with the checkpoint


def test_checkpoint_of_another_run_is_refused(tmp_path):
    _run(tmp_path, steps=4)
    with pytest.raises(ValueError, match=r"different params \(\['lr'\]\)"):
        _run(tmp_path, steps=4, lr=0.01)


def test_checkpoint_holds_what_trains_and_the_loop_state(tmp_path):
    _run(tmp_path, steps=5)
    tags = sorted(p.name for p in tmp_path.glob("step*"))
    assert tags == ["step00000005"]  # every 4 steps and after the last; the newest one kept
    saved = torch.load(tmp_path / tags[-1] / "mp_rank_00_model_states.pt", weights_only=False)
    assert set(saved["module"]) == {"body.0.weight", "body.0.bias", "body.2.weight",
                                    "body.2.bias"}  # neither name of the frozen tied weight
    state = json.loads((tmp_path / tags[-1] / LOOP_STATE).read_text())
    assert (state["step"], state["epoch"], state["position"]) == (5, 1, 0)
    assert state["identity"] == {"lr": 0.05, "seed": 0, "views": ["a", "b"]}
    assert (tmp_path / tags[-1] / "rng_rank0.pt").is_file()


def test_deepspeed_config_fills_the_run_values_into_the_json():
    base = read_config("configs/deepspeed/teacher.json")
    settings = LoopSettings(lr=3e-4, weight_decay=0.0, batch_size=8, micro_batch_size=2,
                            max_steps=10, grad_clip=None, zero_stage=3)
    config = deepspeed_config(settings, world_size=2, grad_accum=2, base=base)
    assert config["train_batch_size"] == 8 and config["gradient_accumulation_steps"] == 2
    assert config["train_micro_batch_size_per_gpu"] == 2
    assert config["zero_optimization"]["stage"] == 3 and config["bf16"] == {"enabled": False}
    assert config["gradient_clipping"] == base["gradient_clipping"]  # None: the JSON's
    assert "optimizer" not in config and "scheduler" not in config
    assert not any(k.startswith("_") for k in config)
    clipped = LoopSettings(lr=1e-3, weight_decay=0.0, batch_size=4, max_steps=1, grad_clip=0.25)
    assert deepspeed_config(clipped, 1, 1)["gradient_clipping"] == 0.25
    with pytest.raises(ValueError, match="optimizer"):
        deepspeed_config(clipped, 1, 1, {"optimizer": {"type": "Adam"}})


def test_rank_shards_partition_the_batch():
    batch = list(range(10, 18))
    assert [shard_for_rank(batch, rank, 2) for rank in range(2)] == [batch[:4], batch[4:]]
    assert sum((shard_for_rank(batch[:7], r, 2) for r in range(2)), []) == batch[:7]
