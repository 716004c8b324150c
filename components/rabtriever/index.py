"""The Rabtriever's document index: every document encoded once, without any query.

Row i holds document `doc_ids[i]`: its pooled embedding (`embeddings` [N, H], fp32) and, for the
predictors that read them (attention, maxsim), its token states (`tokens`). Scoring reads rows
by position; `row` maps an id to its row.

On disk (one folder, no pickle): `doc_embeddings.npy` (float32, row i = `doc_ids.json`[i]) plus
`doc_index.json` (what the rows were encoded with: pooling, document cuts, prompt template
fingerprint, hidden size, stored token layers; checked on load, a mismatch means re-encode), and
with token states `doc_token_ids.npy` (int32, -1 padding), `doc_token_states_L<l>.npy` (fp16, unit
norm) per stored layer and `doc_tokens.json` (`TokenStates.save`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.rabtriever.late_interaction import TokenStates

EMBEDDINGS_FILE = "doc_embeddings.npy"
DOC_IDS_FILE = "doc_ids.json"
INDEX_META_FILE = "doc_index.json"
# What an index must have been encoded with to be read by a model (`read`).
CHECKED_KEYS = ("pooling", "max_doc_tokens", "maxsim_doc_tokens", "template_fingerprint",
                "hidden_size")  # fmt: skip


class DocumentIndex:
    """Document ids, their pooled embeddings [N, H] and (maxsim) token states, row by row."""

    def __init__(
        self, doc_ids: Sequence[str], embeddings: torch.Tensor, tokens: TokenStates | None = None
    ):
        self.doc_ids = list(doc_ids)
        self.embeddings = embeddings
        self.tokens = tokens
        self.row = {d: i for i, d in enumerate(self.doc_ids)}

    @classmethod
    def empty(cls, hidden_size: int) -> DocumentIndex:
        return cls([], torch.zeros(0, hidden_size))

    @classmethod
    def checked(
        cls,
        doc_ids: Sequence[str],
        embeddings: torch.Tensor | np.ndarray,
        tokens: TokenStates | None,
        hidden_size: int,
        token_layers: Sequence[int],
        form: str,
    ) -> DocumentIndex:
        """An index for a predictor of `form` reading `token_layers` (empty: pooled only) at
        `hidden_size`; refused when the rows do not fit it. Token states are kept only when read."""
        embeddings = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if embeddings.shape != (len(doc_ids), hidden_size):
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} do not match {len(doc_ids)} ids x "
                f"hidden {hidden_size}"
            )
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("duplicate document ids in the index")
        if token_layers:
            if tokens is None or len(tokens) != len(doc_ids):
                raise ValueError(f"the {form} predictor needs token states for every document")
            missing = {layer for layer in token_layers if layer > 0} - set(tokens.states)
            if missing:
                raise ValueError(f"the index has no token states of layers {sorted(missing)}")
        return cls(doc_ids, embeddings, tokens if token_layers else None)

    def select(
        self, rows: Sequence[int] | torch.Tensor | None
    ) -> tuple[torch.Tensor, TokenStates | None]:
        """(embeddings, token states) of the documents at `rows` (None: all)."""
        if rows is None:
            return self.embeddings, self.tokens
        rows = torch.as_tensor(rows, dtype=torch.long)
        return self.embeddings[rows], None if self.tokens is None else self.tokens.select(rows)

    def rows(self, doc_ids: Sequence[str]) -> list[int]:
        """The rows of these ids; KeyError naming a few when any is not indexed."""
        missing = [d for d in doc_ids if d not in self.row]
        if missing:
            raise KeyError(f"{len(missing)} candidates are not in the index, e.g. {missing[:3]}")
        return [self.row[d] for d in doc_ids]

    def write(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """Into an existing folder: the rows and `meta` (what they were encoded with)."""
        np.save(folder / EMBEDDINGS_FILE, self.embeddings.numpy().astype(np.float32))
        (folder / DOC_IDS_FILE).write_text(json.dumps(self.doc_ids))
        (folder / INDEX_META_FILE).write_text(json.dumps(meta, indent=2))
        if self.tokens is not None:
            self.tokens.save(folder)

    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / EMBEDDINGS_FILE).exists()

    @staticmethod
    def read(
        path: str | Path, expected: Mapping[str, Any], with_tokens: bool
    ) -> tuple[list[str], np.ndarray, TokenStates | None]:
        """(doc ids, embeddings, token states if `with_tokens`) of the index at `path`, once its
        meta agrees with `expected` (a model's `index_meta`) on `CHECKED_KEYS` and it holds the
        token layers `expected` names."""
        path = Path(path)
        meta = json.loads((path / INDEX_META_FILE).read_text())
        meta.setdefault("maxsim_doc_tokens", meta.get("max_doc_tokens"))  # one cut before
        for key in CHECKED_KEYS:
            if meta.get(key) != expected[key]:
                raise ValueError(
                    f"document index {path} was encoded with {key}={meta.get(key)!r}, this "
                    f"model uses {expected[key]!r}: re-encode the corpus"
                )
        missing = set(expected["token_layers"]) - set(meta.get("token_layers", []))
        if missing:
            raise ValueError(
                f"document index {path} holds no token states of layers {sorted(missing)}, "
                f"which this predictor reads: re-encode the corpus"
            )
        embeddings = np.load(path / EMBEDDINGS_FILE, allow_pickle=False)
        tokens = TokenStates.load(path) if with_tokens else None
        return json.loads((path / DOC_IDS_FILE).read_text()), embeddings, tokens


__all__ = [
    "DOC_IDS_FILE",
    "EMBEDDINGS_FILE",
    "INDEX_META_FILE",
    "DocumentIndex",
]
