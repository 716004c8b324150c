"""Rabtriever's document encodings, collected from the teacher's own pair passes.

The teacher reads the document first: `PromptBuilder.build_document_prompt(d)` is a text prefix
of `build_pair_prompt(d, q)`. Under causal attention the states at the document's tokens do not
depend on the query that follows, so they are the states Rabtriever's document encoder computes
from the document prompt alone (`rabtriever.encode_document_tokens`: final states after the
norm, pooled over the tokens after the chat prefix, and the token states of chosen layers).
`rank_lists` runs the teacher over every candidate anyway; `PairDocumentStates` keeps these
states there, and `CollectedDocuments.encode` hands them to `rabtriever`, which then runs its
own document pass only for documents the teacher never read (one full LLM pass per document
spared: ~0.15 s with bf16, ~0.6 s in fp32 on a 2-core CPU, for the 135M default).

A document is kept only where the token ids of its document prompt are an exact prefix of the
pair prompt's: BPE may merge the document's last token with the separator that follows it in
the pair, and the states would then differ at that token. Those documents are left to the
student's encoder. Entries are keyed by a hash of the document text, the only input besides the
model, the prompt template and the token budget (all recorded in `meta.json` and checked), so
documents of two datasets whose ids collide cannot be confused.

On disk (one folder): `doc_keys.json` (sha256 of each text, row order), `pooled_mean.npy` and
`pooled_last.npy` ([N, H] float32, both poolings), `meta.json`, and the token ids and states of
the kept layers in `TokenStates` files (fp16, unit norm).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.atomic import atomic_path
from components.llm.prompts import PromptBuilder
from components.rabtriever.encoding import document_prompt_rows
from components.rabtriever.late_interaction import TokenStates

FORMAT_VERSION = 1
KEYS_FILE = "doc_keys.json"
META_FILE = "meta.json"
POOLED_FILE = "pooled_{}.npy"
POOLINGS = ("mean", "last")


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the checkpoint's config and weight files (~1.5 s for the 135M default)."""
    digest = hashlib.sha256()
    folder = Path(model_dir)
    for path in sorted([folder / "config.json", *folder.glob("*.safetensors")]):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def encoding_meta(builder: PromptBuilder, hidden_size: int, bf16: bool, model: str) -> dict:
    """What a document's states depend on besides its text (`model`: `model_fingerprint`)."""
    return {
        "model": model,
        "max_doc_tokens": builder.max_doc_tokens,
        "template_fingerprint": builder.template.fingerprint(),
        "hidden_size": hidden_size,
        "bf16": bf16,
    }


class PairDocumentStates:
    """Collects, batch by batch, each new document's states from the teacher's pair passes.

    `LLMReranker.score_pairs` / `forward_pair_states` call `collect` with the decoder's hidden
    states of every batch (`hidden_states[l]`: after decoder layer l, the last entry after the
    final norm, as transformers returns them).
    """

    def __init__(self, tokenizer, builder: PromptBuilder, layers: Sequence[int], num_layers: int):
        self.layers = sorted({layer for layer in layers if layer > 0})  # 0 is looked up from ids
        too_deep = [layer for layer in self.layers if layer > num_layers]
        if too_deep:
            raise ValueError(f"document layers {too_deep} exceed the model's {num_layers} layers")
        self.tokenizer = tokenizer
        self.builder = builder
        self.keys: list[str] = []
        self.pooled: dict[str, list[torch.Tensor]] = {p: [] for p in POOLINGS}
        self.token_ids: list[list[int]] = []
        self.token_states: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self.unmatched = 0  # documents whose boundary token merged (left to the student)
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self.keys)

    def collect(
        self,
        documents: Sequence[str],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden_states: Sequence[torch.Tensor],
    ) -> None:
        """Keep the states of `documents` (row j of a left-padded batch of pair prompts)."""
        new = {}  # key -> batch row, first occurrence of each document not seen before
        for j, text in enumerate(documents):
            key = text_key(text)
            if key not in self._seen:
                self._seen.add(key)
                new[key] = j
        if not new:
            return
        rows, skips = document_prompt_rows(self.tokenizer, self.builder,
                                           [documents[j] for j in new.values()])  # fmt: skip
        width = input_ids.shape[1]
        for (key, j), doc, skip in zip(new.items(), rows, skips, strict=True):
            start = width - int(attention_mask[j].sum())  # left padding
            if input_ids[j, start : start + len(doc)].tolist() != doc:
                self.unmatched += 1
                continue
            span = slice(start + skip, start + len(doc))
            # Copies, not views: a view would keep the whole batch's states alive.
            post = hidden_states[-1][j, span].to("cpu", torch.float32, copy=True)
            self.keys.append(key)
            self.pooled["mean"].append(post.mean(0))
            self.pooled["last"].append(post[-1].clone())
            self.token_ids.append(doc[skip:])
            for layer in self.layers:
                states = hidden_states[layer][j, span].to("cpu", torch.float32, copy=True)
                self.token_states[layer].append(states)

    def save(self, folder: str | Path, meta: dict) -> Path:
        """Write the collected documents (atomically: a half-written folder never appears)."""
        folder = Path(folder)
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            (tmp / KEYS_FILE).write_text(json.dumps(self.keys))
            for pooling, rows in self.pooled.items():
                hidden = meta["hidden_size"]
                array = torch.stack(rows).numpy() if rows else np.zeros((0, hidden), np.float32)
                np.save(tmp / POOLED_FILE.format(pooling), array.astype(np.float32))
            TokenStates.from_rows(self.token_ids, self.token_states).save(tmp)
            full_meta = {**meta, "format": FORMAT_VERSION, "token_layers": self.layers,
                         "count": len(self.keys), "unmatched": self.unmatched}  # fmt: skip
            (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2))
        return folder


@dataclass
class CollectedDocuments:
    """Documents encoded by the teacher's pair passes, as read back by `rabtriever`."""

    keys: list[str]
    pooled: dict[str, torch.Tensor]  # pooling -> [N, H] float32
    tokens: TokenStates
    meta: dict

    @classmethod
    def load(cls, folder: str | Path) -> CollectedDocuments:
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{folder}: collected-documents format {meta.get('format')!r}, "
                             f"this code reads {FORMAT_VERSION}")  # fmt: skip
        pooled = {p: torch.from_numpy(np.load(folder / POOLED_FILE.format(p))) for p in POOLINGS}
        keys = json.loads((folder / KEYS_FILE).read_text())
        return cls(keys, pooled, TokenStates.load(folder), meta)

    def mismatch(self, retriever, model: str) -> str | None:
        """Why these states cannot stand in for `retriever`'s own encoding (None: they can);
        `model`: the `model_fingerprint` of the checkpoint `retriever` was loaded from."""
        expected = encoding_meta(retriever.prompts, retriever.predictor.hidden_size,
                                 retriever.bf16, model)  # fmt: skip
        for key, value in expected.items():
            if self.meta.get(key) != value:
                return f"{key} is {self.meta.get(key)!r} there, {value!r} here"
        if retriever.separate_token_pass:  # token states come from the student's own cut
            return None
        missing = set(layer for layer in retriever.token_layers if layer > 0) - set(
            self.meta.get("token_layers", [])
        )
        if missing:
            return f"no token states of layers {sorted(missing)}"
        return None

    def encode(
        self, retriever, texts: Sequence[str], batch_size: int = 16
    ) -> tuple[torch.Tensor, TokenStates | None, int]:
        """`retriever.encode_corpus(texts)`, taking every collected document from here:
        (pooled [N, H], token states or None, how many texts the retriever ran a full pass
        over). A student whose token states read another cut of each document than the
        teacher's (`Rabtriever.separate_token_pass`) takes only the pooled vectors from here and
        computes every document's token states itself, in a pass as deep as its deepest layer."""
        row = {key: i for i, key in enumerate(self.keys)}
        found = [row.get(text_key(t)) for t in texts]
        fresh = [i for i, r in enumerate(found) if r is None]
        embs = torch.zeros(len(texts), retriever.predictor.hidden_size)
        kept = [i for i, r in enumerate(found) if r is not None]
        if kept:
            embs[kept] = self.pooled[retriever.pooling][[found[i] for i in kept]]
        own_cut = retriever.separate_token_pass
        fresh_texts = [texts[i] for i in fresh]
        fresh_embs, fresh_tokens = None, None
        if fresh and own_cut:
            fresh_embs = retriever.encode_documents(fresh_texts, batch_size)
        elif fresh:
            fresh_embs, fresh_tokens = retriever.encode_corpus(fresh_texts, batch_size)
        if fresh_embs is not None:
            embs[fresh] = fresh_embs
        layers = retriever.token_layers
        if not layers:
            return embs, None, len(fresh)
        if own_cut:
            return embs, retriever.document_token_states(texts, batch_size), len(fresh)
        stored = [layer for layer in layers if layer > 0]
        mine = self.tokens.select([found[i] for i in kept])
        parts = [TokenStates(mine.token_ids, {layer: mine.states[layer] for layer in stored})]
        if fresh_tokens is not None:
            parts.append(fresh_tokens)
        # Rows of [kept; fresh] back in input order.
        position = {i: n for n, i in enumerate(kept + fresh)}
        tokens = TokenStates.concat(parts).select([position[i] for i in range(len(texts))])
        return embs, tokens, len(fresh)
