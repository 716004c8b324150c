"""Queries and documents through the frozen teacher LLM: what the predictor reads.

    query  --LLM(build_query_prompt)-->    q  (last decoder layer output at the answer position,
                                               BEFORE the final norm: the LM head's input space)
    doc    --LLM(build_document_prompt)--> d  (post-norm states, pooled over the document tokens)

Why these spaces:
- q is taken before the final norm because the prediction is a residual update of q and must
  live where the teacher's last layer writes (the norm + head then read it exactly as they read
  the teacher's state).
- d is pooled after the final norm: before it, a few tokens (BOS, chat markers) carry "massive
  activations" hundreds of times larger than the rest, and a mean would be dominated by those
  document-independent tokens. The per-token RMS normalisation removes that.

Documents are encoded once, without any query, so a corpus is embedded offline. For the `maxsim`
predictor a document also keeps its own tokens' states at the compared decoder layers (its
latent is then a set of vectors, as in ColBERT; `components/rabtriever/late_interaction.py`),
and a query is read twice in one call: through the query prompt (its answer state and the pooled
vector of its own segment) and through the document prompt (its token states, in the context the
document tokens had), after a cached chat prefix (`PrefixCache`). The maxsim predictor then
reads the late-interaction features of the two (`PairFeatures`).

Prompts are tokenised without added special tokens and batched by length, left-padded; the
states come from `components/llm/hidden_states.py`. Encodings are returned on the CPU, in input
order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from components.llm.hidden_states import final_states, layer_states, model_device
from components.llm.padding import left_pad
from components.llm.prompts import PromptBuilder
from components.progress import progress
from components.rabtriever.late_interaction import (
    TokenStates,
    maxsim_features,
    num_features,
    scans_vocabulary,
    unit_vocabulary,
)

POOLINGS = ("mean", "last")


def _tokenize(tokenizer, prompts: list[str]) -> list[list[int]]:
    # The chat template already holds BOS-like markers; adding special tokens would double them.
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


def _length_batches(
    rows: Sequence[Sequence[int]], batch_size: int, tokenizer, model: nn.Module
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(input positions, ids, mask) in batches of similar length (little padding); left-padded."""
    device = model_device(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    starts = range(0, len(order), batch_size)
    for start in progress(starts, f"encoding {len(order)} texts", unit="batch"):
        index = order[start : start + batch_size]
        ids, mask = left_pad([rows[i] for i in index], tokenizer.pad_token_id)
        yield index, ids.to(device), mask.to(device)


@torch.inference_mode()
def encode_queries(
    model: nn.Module,
    tokenizer,
    builder: PromptBuilder,
    queries: Sequence[str],
    batch_size: int = 16,
    autocast_bf16: bool = False,
) -> torch.Tensor:
    """[N, H] fp32 (CPU): each query's `build_query_prompt` state at the answer position (the
    last token), taken BEFORE the final norm, in input order."""
    hidden = model.config.hidden_size
    out = torch.zeros(len(queries), hidden)
    rows = _tokenize(tokenizer, [builder.build_query_prompt(q) for q in queries])
    for index, ids, mask in _length_batches(rows, batch_size, tokenizer, model):
        pre, _, _ = final_states(model, ids, mask, autocast_bf16)
        out[index] = pre[:, -1].cpu()
    return out


@torch.inference_mode()
def encode_documents(
    model: nn.Module,
    tokenizer,
    builder: PromptBuilder,
    documents: Sequence[str],
    batch_size: int = 16,
    pooling: str = "mean",
    autocast_bf16: bool = False,
) -> torch.Tensor:
    """[N, H] fp32 (CPU): each document's `build_document_prompt` states AFTER the final norm,
    pooled, in input order.

    pooling="mean": over the document's own tokens (the label and text); the chat prefix (system
    prompt, role markers) is the same for every document and would only dilute the mean.
    pooling="last": the last token's state (a causal LM's summary of everything before it).
    """
    pooled, _ = encode_document_tokens(
        model, tokenizer, builder, documents, (), batch_size, pooling, autocast_bf16
    )
    return pooled


def _prefix_lengths(tokenizer, builder: PromptBuilder, rows: Sequence[Sequence[int]]) -> list[int]:
    """Chat-prefix tokens to skip per document-prompt row. Skipped only where the prefix
    tokenised as a token prefix of the row (BPE could merge across the boundary); otherwise the
    whole row counts rather than a guess."""
    prefix_ids = _tokenize(tokenizer, [builder.chat_prefix])[0]
    return [len(prefix_ids) if list(r[: len(prefix_ids)]) == prefix_ids else 0 for r in rows]


def _own_lengths(tokenizer, builder: PromptBuilder, queries: Sequence[str],
                 rows: Sequence[Sequence[int]]) -> list[int]:  # fmt: skip
    """Per query-prompt row, where the query's own segment ends (`build_query_head`). Where BPE
    merged the query's last token with what follows, the segment ends before that token."""
    heads = _tokenize(tokenizer, [builder.build_query_head(q) for q in queries])
    ends = []
    for head, row in zip(heads, rows, strict=True):
        n = 0
        while n < min(len(head), len(row)) and head[n] == row[n]:
            n += 1
        ends.append(n)
    return ends


def _kept_outputs(
    ids: torch.Tensor,
    mask: torch.Tensor,
    post: torch.Tensor | None,
    states: Mapping[int, torch.Tensor],
    start: Sequence[int],
    pooling: str,
    stop: Sequence[int] | None = None,
) -> tuple[torch.Tensor | None, list[list[int]], dict[int, list[torch.Tensor]]]:
    """From a padded batch: pooled post-norm states [B, H] (CPU; None without `post`) and, per
    row, the ids and `states` of the tokens kept: row positions [start, stop) counted over the
    row's real tokens (stop None: to the end). A row with nothing in range keeps all of its
    tokens.

    pooling="mean" averages the kept tokens; "last" takes the last kept token's state."""
    position = mask.cumsum(-1) - 1  # index within the row's real tokens; -1 on padding
    keep = mask.bool() & (position >= torch.as_tensor(start, device=ids.device)[:, None])
    if stop is not None:
        keep &= position < torch.as_tensor(stop, device=ids.device)[:, None]
    empty = ~keep.any(-1)
    keep[empty] = mask[empty].bool()
    token_ids = [ids[j, keep[j]].tolist() for j in range(len(ids))]
    token_states = {
        layer: [h[j, keep[j]].float().cpu() for j in range(len(ids))] for layer, h in states.items()
    }
    if post is None:
        return None, token_ids, token_states
    if pooling == "last":
        columns = torch.arange(keep.shape[1], device=ids.device)
        last = (keep * columns).argmax(-1)
        pooled = post[torch.arange(len(ids), device=ids.device), last]
    else:
        weights = keep.float()[..., None]
        pooled = (post * weights).sum(1) / weights.sum(1)
    return pooled.cpu(), token_ids, token_states


class _TokenRows:
    """Per-text token ids and states, filled batch by batch in any order; `TokenStates` at the end
    in input order."""

    def __init__(self, n: int, layers: Sequence[int]):
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.states: dict[int, list[torch.Tensor]] = {layer: [torch.zeros(0)] * n
                                                      for layer in layers}  # fmt: skip

    def put(self, index: Sequence[int], ids: list[list[int]], states) -> None:
        for j, i in enumerate(index):
            self.ids[i] = ids[j]
            for layer, rows in states.items():
                self.states[layer][i] = rows[j]

    def done(self) -> TokenStates:
        return TokenStates.from_rows(self.ids, self.states)


def document_prompt_rows(
    tokenizer, builder: PromptBuilder, texts: Sequence[str]
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each text's `build_document_prompt`, and where its own tokens start (after
    the chat prefix): the tokens whose states a document's encoding keeps."""
    rows = _tokenize(tokenizer, [builder.build_document_prompt(t) for t in texts])
    return rows, _prefix_lengths(tokenizer, builder, rows)


def document_token_ids(tokenizer, builder: PromptBuilder, texts: Sequence[str]) -> list[list[int]]:
    """The ids of each text's own tokens in `build_document_prompt` (after the chat prefix):
    what the token states are kept for, and what the IDF table is fitted on. No LLM pass."""
    rows, skip = document_prompt_rows(tokenizer, builder, texts)
    return [row[n:] for row, n in zip(rows, skip, strict=True)]


@dataclass
class PrefixCache:
    """Keys/values of the chat prefix every prompt starts with (one row). Computed once per
    model: the prefix is about a third of a short query's prompt."""

    token_ids: list[int]
    past_key_values: Any

    @classmethod
    @torch.inference_mode()
    def build(cls, model: nn.Module, tokenizer, builder: PromptBuilder, autocast_bf16: bool):
        prefix = _tokenize(tokenizer, [builder.chat_prefix])[0]
        ids = torch.tensor([prefix], device=model_device(model))
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            out = model.get_decoder()(
                input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True
            )
        return cls(prefix, out.past_key_values)


@torch.inference_mode()
def encode_query_tokens(
    model: nn.Module,
    tokenizer,
    builder: PromptBuilder,
    queries: Sequence[str],
    layers: Sequence[int],
    batch_size: int = 16,
    pooling: str = "mean",
    autocast_bf16: bool = False,
    prefix_cache: PrefixCache | None = None,
    token_builder: PromptBuilder | None = None,
) -> tuple[torch.Tensor, torch.Tensor, TokenStates]:
    """Queries for the maxsim predictor: the answer state [N, H] (pre-norm, as
    `encode_queries`) and the pooled post-norm vector [N, H] of the query's own segment
    (`build_query_head`: its label and text), both from one pass over `build_query_prompt`; and
    the token states at `layers` of the query read as a document (`build_document_prompt`, the
    context the document tokens had), from a pass only as deep as the deepest layer asked for.

    Measured on SciFact (docs/studies.md): token states from the query prompt instead cost
    about 0.01 nDCG@10; the pooled vector from it costs about 0.005 and saves a full pass.
    With `prefix_cache` and one query, only what follows the cached chat prefix runs.
    `token_builder` (default `builder`) reads the query as a document: the documents' cut."""
    rows = _tokenize(tokenizer, [builder.build_query_prompt(q) for q in queries])
    starts = _prefix_lengths(tokenizer, builder, rows)
    stops = _own_lengths(tokenizer, builder, queries, rows)
    answer = torch.zeros(len(queries), model.config.hidden_size)
    pooled = torch.zeros(len(queries), model.config.hidden_size)
    prefix = prefix_cache.token_ids if prefix_cache is not None else []
    row = rows[0] if len(rows) == 1 else []
    if prefix and row[: len(prefix)] == prefix and len(row) > len(prefix):
        device, shift = model_device(model), len(prefix)
        ids = torch.tensor([row[shift:]], device=device)
        mask = torch.ones(1, len(row), dtype=torch.long, device=device)
        positions = torch.arange(shift, len(row), device=device)[None]
        pre, post, _ = final_states(
            model, ids, mask, autocast_bf16, (), positions,
            copy.deepcopy(prefix_cache.past_key_values),
        )  # fmt: skip
        answer[0] = pre[0, -1].cpu()
        # Positions count from the first token after the prefix here.
        pooled[:], _, _ = _kept_outputs(
            ids, mask[:, shift:], post, {}, [starts[0] - shift], pooling, [stops[0] - shift]
        )
    else:
        for index, ids, mask in _length_batches(rows, batch_size, tokenizer, model):
            pre, post, _ = final_states(model, ids, mask, autocast_bf16)
            answer[index] = pre[:, -1].cpu()
            pooled[index], _, _ = _kept_outputs(ids, mask, post, {}, [starts[i] for i in index],
                                                pooling, [stops[i] for i in index])  # fmt: skip
    return answer, pooled, document_token_states(
        model, tokenizer, token_builder or builder, queries, layers, batch_size, autocast_bf16
    )


@torch.inference_mode()
def document_token_states(
    model: nn.Module,
    tokenizer,
    builder: PromptBuilder,
    texts: Sequence[str],
    layers: Sequence[int],
    batch_size: int = 16,
    autocast_bf16: bool = False,
) -> TokenStates:
    """Token ids and states at `layers` (> 0 stored) of texts read through
    `build_document_prompt`, the tokens after the chat prefix, as `encode_document_tokens`
    keeps them; the pass stops at the deepest layer asked for (none: no pass at all)."""
    stored = [layer for layer in layers if layer > 0]
    if not stored:
        return TokenStates.from_rows(document_token_ids(tokenizer, builder, texts), {})
    rows, skip = document_prompt_rows(tokenizer, builder, texts)
    out = _TokenRows(len(texts), stored)
    for index, ids, mask in _length_batches(rows, batch_size, tokenizer, model):
        states = layer_states(model, ids, mask, stored, autocast_bf16)
        _, kept_ids, kept_states = _kept_outputs(
            ids, mask, None, states, [skip[i] for i in index], "mean"
        )
        out.put(index, kept_ids, kept_states)
    return out.done()


@torch.inference_mode()
def encode_document_tokens(
    model: nn.Module,
    tokenizer,
    builder: PromptBuilder,
    documents: Sequence[str],
    layers: Sequence[int],
    batch_size: int = 16,
    pooling: str = "mean",
    autocast_bf16: bool = False,
) -> tuple[torch.Tensor, TokenStates]:
    """`encode_documents`' pooled [N, H] plus the token states of the same forward pass: the
    document's own tokens (after the chat prefix) at each decoder layer of `layers` (> 0 stored;
    layer 0 is looked up from the ids when scoring). See `late_interaction`."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    out = torch.zeros(len(documents), model.config.hidden_size)
    stored = [layer for layer in layers if layer > 0]
    tokens = _TokenRows(len(documents), stored)
    rows, skip = document_prompt_rows(tokenizer, builder, documents)
    for index, ids, mask in _length_batches(rows, batch_size, tokenizer, model):
        _, post, states = final_states(model, ids, mask, autocast_bf16, stored)
        pooled, kept_ids, kept_states = _kept_outputs(
            ids, mask, post, states, [skip[i] for i in index], pooling
        )
        out[index] = pooled
        tokens.put(index, kept_ids, kept_states)
    return out, tokens.done()


@dataclass
class QueryEncoding:
    """What scoring needs from one query: its answer-position state (query prompt) and, for the
    maxsim form, its token states (read as a document) and the pooled vector of its own segment
    of the query prompt."""

    state: torch.Tensor  # [H] pre-norm
    tokens: TokenStates | None = None
    pooled: torch.Tensor | None = None  # [H]


class PairFeatures:
    """The maxsim predictor's late-interaction features (`late_interaction.maxsim_features`) of
    queries against documents, at layers `layers` with the IDF table `idf`; layer 0 is looked up
    in the frozen LLM's token `embedding` table."""

    def __init__(self, embedding: nn.Module):
        self.embedding = embedding
        self.unit_vocab: torch.Tensor | None = None  # built on the first corpus scan

    def __call__(self, query_tokens: TokenStates | None, query_pooled: torch.Tensor | None,
                 doc_embs: torch.Tensor, doc_tokens: TokenStates | None, idf: torch.Tensor,
                 layers: Sequence[int]) -> torch.Tensor:  # fmt: skip
        """[N, k] features of one query (token states with one row, pooled [H]) against these
        documents (pooled [N, H] and token states)."""
        if query_tokens is None or query_pooled is None or doc_tokens is None:
            raise ValueError("the maxsim predictor needs the query's and documents' token states")
        # The LLM is frozen: a corpus scan normalises its embedding table once, not per query.
        if self.unit_vocab is None and scans_vocabulary(doc_tokens, layers, self.embedding):
            self.unit_vocab = unit_vocabulary(self.embedding)
        return maxsim_features(
            query_tokens, doc_tokens, query_pooled, doc_embs, idf, layers, self.embedding,
            unit_vocab=self.unit_vocab,
        )  # fmt: skip

    def pairs(self, query_tokens: TokenStates, query_pooled: torch.Tensor, doc_embs: torch.Tensor,
              doc_tokens: TokenStates, query_index: torch.Tensor, doc_index: torch.Tensor,
              idf: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:  # fmt: skip
        """[P, k] features of the pairs (query row query_index[p], document row doc_index[p]),
        from each query's encoding (token states and pooled [Q, H]) computed once."""
        out = torch.zeros(len(query_index), num_features(layers))
        for q in query_index.unique().tolist():
            rows = (query_index == q).nonzero().squeeze(1)
            docs = doc_index[rows]
            out[rows] = self(query_tokens.select([q]), query_pooled[q], doc_embs[docs],
                             doc_tokens.select(docs), idf, layers)  # fmt: skip
        return out


__all__ = [
    "POOLINGS",
    "PairFeatures",
    "PrefixCache",
    "QueryEncoding",
    "document_prompt_rows",
    "document_token_ids",
    "document_token_states",
    "encode_document_tokens",
    "encode_documents",
    "encode_queries",
    "encode_query_tokens",
]
