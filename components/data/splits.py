"""The query splits, decided once by `validate` and read by every later stage.

- `test`: every judged query of the test split, as ids only (the topics). The model stages
  score `evaluated`, a seeded sample of them (`data.eval_queries`); only `evaluate` reads
  their judgements.
- `heldout`: the dev split, a seeded share of the training queries (`data.dev_queries`, at
  most `data.dev_max_share` of them) that no training stage sees. Every choice (defaults,
  early stopping, promotion) is made on it.
- `train`: the remaining training queries, the only ones training stages learn from.

When the models train on another dataset's queries (`data.train_name`, e.g. TREC DL trains
on SciFact), `train` and `heldout` are that dataset's queries.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from components.atomic import write_text_atomic
from components.data.sampling import sample_query_ids

# Run files and tables name the held-out dev split so; `dev` is taken by ESConv's qrels file.
HELDOUT = "heldout"


@dataclass(frozen=True)
class QuerySplits:
    dataset: str  # the evaluated dataset
    train_name: str  # the dataset whose training queries `train` and `heldout` are
    test_split: str  # qrels file of `test`
    train_split: str  # qrels file of `train` and `heldout`
    seed: int
    test: list[str]
    evaluated: list[str]
    heldout: list[str]
    train: list[str]

    @classmethod
    def carve(cls, dataset: str, train_name: str, test_split: str, train_split: str,
              test_ids, train_ids, eval_queries: int, dev_queries: int,
              dev_max_share: float, seed: int) -> QuerySplits:
        """Seeded, sorted splits; `heldout` is drawn with its own stream of the seed, so
        changing `data.eval_queries` does not move it."""
        train_ids = sorted(set(train_ids))
        n_dev = min(dev_queries, int(len(train_ids) * dev_max_share))
        heldout = sorted(random.Random(f"heldout-{seed}").sample(train_ids, n_dev))
        held = set(heldout)
        return cls(dataset=dataset, train_name=train_name, test_split=test_split,
                   train_split=train_split, seed=seed, test=sorted(set(test_ids)),
                   evaluated=sample_query_ids(test_ids, eval_queries, seed),
                   heldout=heldout, train=[q for q in train_ids if q not in held])

    @property
    def trains_elsewhere(self) -> bool:
        return self.train_name != self.dataset

    @property
    def dev_evaluated(self) -> list[str]:
        """The held-out queries the stages score over the evaluated corpus: none when they
        are another dataset's queries (their documents are not in this corpus)."""
        return [] if self.trains_elsewhere else self.heldout

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> QuerySplits:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the `validate` stage first "
                                    "(it writes the query splits every stage reads)")
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def summary(self) -> str:
        return (f"test {len(self.test)} queries ({len(self.evaluated)} scored by the models), "
                f"dev {len(self.heldout)} held out of {len(self.heldout) + len(self.train)} "
                f"{self.train_name} training queries, train {len(self.train)}")
