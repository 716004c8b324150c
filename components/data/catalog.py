"""What differs between the bundled datasets, in one place.

Every dataset runs through the same stages; only a few facts differ: which qrels splits
train and evaluate, whether the models train on another dataset's queries (TREC DL 2019
has no training split), which prompt wording the teacher uses, which trec_eval measure
is the task's headline next to nDCG@10, and whether the corpus is a label set (then the
training-frequency prior is a reference). `components.config` fills the `null` entries of
`params.yaml` (`data.train_name`, `data.train_split`, `data.test_split`, `teacher.task`)
from here, so `dvc exp run -S data.name=<dataset>` is the whole command. A dataset that is
not listed (your own BEIR folder) gets `DEFAULT`: train/test splits, itself as training
data, the generic prompt, nDCG@10.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    prompt_task: str  # a task in components/llm/prompt_templates.yaml
    train_split: str = "train"
    test_split: str = "test"
    train_name: str | None = None  # dataset whose train split trains the models; None = itself
    headline: str = "ndcg_cut_10"  # trec_eval key of the task's headline metric
    extra_metrics: tuple[str, ...] = ()  # evaluated on top of `evaluate.metrics`
    task: str = ""  # one line for reports
    # The corpus is a small label set every query is judged against: `evaluate` adds the
    # training-frequency prior as a reference (components/evaluation/prior.py).
    label_prior: bool = False


DEFAULT = DatasetSpec(prompt_task="default", task="your own BEIR dataset")

CATALOG: dict[str, DatasetSpec] = {
    "scifact": DatasetSpec(
        prompt_task="scifact",
        task="scientific claim -> evidence abstract"),
    "trec-dl19-subset": DatasetSpec(
        prompt_task="trec-dl",
        train_name="scifact",  # no MS MARCO training data is bundled: train on SciFact
        task="web question -> MS MARCO passage, graded 1-3 (trained on SciFact)"),
    "esconv-strategy": DatasetSpec(
        prompt_task="esconv-strategy", train_split="dev", test_split="test",
        headline="recall_1", extra_metrics=("recall_1", "recall_3"), label_prior=True,
        task="dialogue context -> support strategy of the next reply (8 documents)"),
    "esconv-reply": DatasetSpec(
        prompt_task="esconv-reply", train_split="dev", test_split="test",
        headline="recip_rank_10", extra_metrics=("recall_1",),
        task="dialogue context -> the supporter's next reply"),
    "robot-instructions": DatasetSpec(
        prompt_task="robot", headline="P_1", extra_metrics=("P_1",),
        task="LIBERO instruction -> goal specification (unseen test suites)"),
}


def spec(name: str) -> DatasetSpec:
    return CATALOG.get(name, DEFAULT)


def eval_metrics(name: str, configured: list[str]) -> list[str]:
    """`evaluate.metrics` plus the dataset's own measures (headline included), in order."""
    wanted = [*configured, *spec(name).extra_metrics, spec(name).headline]
    return list(dict.fromkeys(wanted))
