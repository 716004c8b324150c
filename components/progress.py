"""Progress bars for the loops that run for minutes (teacher scoring, corpus encoding, decoding).

Shown where someone watches: a terminal (`python -m flows.rank_lists`, or `dvc repro`, which
passes its terminal on to the stage). Off where nobody does and a bar would only fill logs with
carriage returns: when stderr is not a terminal (the pipeline flow pipes each stage into the
Prefect logs), under CI (`CI` set), or with `RERANK_PROGRESS=0`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    if os.environ.get("RERANK_PROGRESS") == "0" or os.environ.get("CI"):
        return False
    return os.environ.get("RERANK_PROGRESS") == "1" or sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None,
             unit: str = "it") -> Iterator[T]:
    """`items`, with a bar named `desc` on stderr where `enabled()`; the bar goes when done."""
    return iter(tqdm(items, desc=desc, total=total, unit=unit, disable=not enabled(),
                     leave=False, dynamic_ncols=True))
