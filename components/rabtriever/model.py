"""Rabtriever: the teacher reranker turned into a retriever by a small predictor (JEPA student).

Every LLM parameter stays frozen (the student *is* the trained teacher); the only trainable part
is a `Predictor` between the last decoder layer and the final norm + LM head:

    query  --LLM(build_query_prompt)-->    q  (last decoder layer output at the answer position,
                                               BEFORE the final norm: the LM head's input space)
    doc    --LLM(build_document_prompt)--> d  (post-norm states, pooled over the document tokens)
    predictor(q, d)                     -> q' (predicted context-aware query state, pre-norm)
    score = log p(Yes) - log p(No) of  lm_head(final_norm(q'))     (read out as the teacher does)

The default `maxsim` predictor also keeps each document's token states (the document latent is
then a set of vectors, as in ColBERT) and reads the pair through late-interaction statistics of
the query's and the document's token states (`components/rabtriever/late_interaction.py`); the
query then also runs through the document prompt, in the same batched LLM pass, after a cached
chat prefix.

Documents are encoded once, without any query, so a corpus is embedded offline; per query the
LLM runs once and the predictor (a few million parameters) runs once per candidate. The training
target is the teacher's own answer-position state with the document in the prompt
(`LLMReranker.forward_pair_states(...).hidden`, which is AFTER the final norm): the student's
prediction is compared to it after the same frozen norm (see `components/rabtriever/jepa_loss.py`).

Why these spaces:
- q is taken before the final norm because the prediction is a residual update of q and must
  live where the teacher's last layer writes (the norm + head then read it exactly as they read
  the teacher's state).
- d is pooled after the final norm: before it, a few tokens (BOS, chat markers) carry "massive
  activations" hundreds of times larger than the rest, and a mean would be dominated by those
  document-independent tokens. The per-token RMS normalisation removes that.
- Losses compare post-norm vectors: the RMSNorm is scale-invariant, so the norm of a pre-norm
  state never reaches the LM head; matching it would spend capacity on nothing.

On disk (`Rabtriever.save`): `predictor.safetensors`, `rabtriever.json` (predictor config,
pooling, prompt template and answer ids); a document index is `doc_embeddings.npy` (float32,
row i = `doc_ids.json`[i]) plus `doc_index.json` (what the rows were encoded with, checked on
load), and for maxsim `doc_token_ids.npy` (int32, -1 padding) and `doc_token_states_L<l>.npy`
(fp16, unit norm) per stored layer. The predictor's IDF table and feature statistics are
buffers in `predictor.safetensors`. No pickle anywhere.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from components.atomic import atomic_path
from components.llm.base_model import load_causal_lm, load_tokenizer
from components.llm.padding import left_pad
from components.llm.precision import bf16_available
from components.llm.prompts import (
    AnswerTokens,
    PromptBuilder,
    PromptTemplate,
    resolve_answer_token_ids,
)
from components.rabtriever.late_interaction import (
    TokenStates,
    fit_idf,
    maxsim_features,
    num_features,
    scans_vocabulary,
    unit_vocabulary,
)
from components.runs import Run
from components.teacher.reranker import yes_no_score

log = logging.getLogger(__name__)

POOLINGS = ("mean", "last")
PREDICTOR_FORMS = ("mlp", "film", "maxsim")
FORMAT_VERSION = 1
PREDICTOR_FILE = "predictor.safetensors"
CONFIG_FILE = "rabtriever.json"
EMBEDDINGS_FILE = "doc_embeddings.npy"
DOC_IDS_FILE = "doc_ids.json"
INDEX_META_FILE = "doc_index.json"


# --------------------------------------------------------------------------------------------
# The trainable part
# --------------------------------------------------------------------------------------------


class Predictor(nn.Module):
    """Maps a query state q, conditioned on a document embedding d, to a predicted pair state.

        q' = q + rms(q) * W_out h(LN(q), LN(d)),     W_out initialised to zero

    form="mlp" (default): h = MLP([q; d; q*d]). The element-wise product is the cheapest explicit
        query-document interaction (as in InferSent/ESIM matching features); a plain [q; d]
        concatenation would need a much wider MLP to approximate multiplicative effects. The first
        layer is split into W_q q + W_d d + W_qd (q*d), so in a corpus scan the W_q q term is
        computed once per query, not once per document.
    form="film": h = GELU(W_q q) * (1 + gamma(d)) + beta(d) (FiLM: the document rescales and
        shifts the query's features). About the same size at the same width; the interaction is
        limited to a per-feature scale and shift, a weaker but smoother conditioning.

    Why the residual and the zero init: at initialisation q' = q, so the student starts as the
    teacher judging the query with no document (a sane score), and training only has to learn
    what the document changes. Why scale by rms(q): the final RMSNorm divides by rms anyway, so
    expressing the update in units of rms(q) makes the predictor's output scale independent of
    the residual stream's magnitude, which differs by orders of magnitude across models.

    form="maxsim": the document latent is its token states (`late_interaction.py`)
        and the update is linear in k standardised late-interaction features f(q, d) (MaxSim and
        IDF-weighted MaxSim per layer of `layers`, the pooled cosine):
            q' = q + rms(q) * W_f (f - mu) / sigma,     W_f [H, k] initialised to zero
        mu, sigma are fitted on the training pairs (`fit_feature_scaling`); the IDF table the
        features use travels with the weights (`idf`, fitted on the whole corpus). Width and
        depth are unused. Measured best on SciFact (docs/studies.md, `maxsim_study.py`): with a
        few hundred teacher pairs, an MLP over pooled vectors overfits where this small map
        generalises.

    Size: hidden 576 (SmolLM2), width 1024, depth 1, mlp -> about 2.4M parameters; maxsim with
    two layers -> 3.5k weights (plus the 49k-entry IDF table, not trained).
    """

    def __init__(
        self,
        hidden_size: int,
        width: int = 1024,
        depth: int = 1,
        form: str = "mlp",
        dropout: float = 0.0,
        layers: Sequence[int] = (),
        vocab_size: int = 0,
    ):
        super().__init__()
        if form not in PREDICTOR_FORMS:
            raise ValueError(f"predictor form must be one of {PREDICTOR_FORMS}, got {form!r}")
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        if form == "maxsim" and (not layers or vocab_size < 1):
            raise ValueError("the maxsim form needs token layers and the vocabulary size")
        self.hidden_size, self.width, self.depth = hidden_size, width, depth
        self.form, self.dropout = form, dropout
        self.layers = [int(layer) for layer in layers] if form == "maxsim" else []
        self.vocab_size = vocab_size if form == "maxsim" else 0
        if form == "maxsim":
            k = num_features(self.layers)
            self.register_buffer("feature_mean", torch.zeros(k))
            self.register_buffer("feature_std", torch.ones(k))
            self.register_buffer("idf", torch.zeros(vocab_size))
            self.features_out = nn.Linear(k, hidden_size)
            nn.init.zeros_(self.features_out.weight)
            nn.init.zeros_(self.features_out.bias)
            return
        self.norm_q = nn.LayerNorm(hidden_size)
        self.norm_d = nn.LayerNorm(hidden_size)
        self.in_q = nn.Linear(hidden_size, width)
        if form == "mlp":
            self.in_d = nn.Linear(hidden_size, width, bias=False)
            self.in_qd = nn.Linear(hidden_size, width, bias=False)
        else:
            self.film = nn.Linear(hidden_size, 2 * width)
            # Identity modulation at init: (1 + gamma) = 1, beta = 0.
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        blocks: list[nn.Module] = []
        for _ in range(depth - 1):
            blocks += [nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def config(self) -> dict[str, Any]:
        config = {
            "hidden_size": self.hidden_size,
            "width": self.width,
            "depth": self.depth,
            "form": self.form,
            "dropout": self.dropout,
        }
        if self.form == "maxsim":
            config.update(layers=self.layers, vocab_size=self.vocab_size)
        return config

    @property
    def uses_tokens(self) -> bool:
        """Whether scoring needs token states and late-interaction features (maxsim form)."""
        return self.form == "maxsim"

    def fit_feature_scaling(self, features: torch.Tensor) -> None:
        """Standardise the late-interaction features with the training pairs' mean and std."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).nan_to_num(1.0).clamp(min=1e-6))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Predictor:
        return cls(**config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, query: torch.Tensor, doc: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query [B, H] or [1, H] (broadcast over documents), doc [B, H], features [B, k]
        (maxsim form only) -> prediction [B, H]."""
        scale = query.pow(2).mean(-1, keepdim=True).sqrt()
        if self.form == "maxsim":
            if features is None:
                raise ValueError("the maxsim predictor needs late-interaction features")
            z = (features.to(query.dtype) - self.feature_mean) / self.feature_std
            return query + scale * self.features_out(z)
        q, d = self.norm_q(query), self.norm_d(doc)
        if self.form == "mlp":
            h = F.gelu(self.in_q(q) + self.in_d(d) + self.in_qd(q * d))
        else:
            gamma, beta = self.film(d).chunk(2, dim=-1)
            h = F.gelu(self.in_q(q)) * (1 + gamma) + beta
        h = self.blocks(F.dropout(h, self.dropout, self.training))
        return query + scale * self.out(h)


class RabtrieverScorer(nn.Module):
    """The teacher's readout applied to a predicted state: frozen final norm + LM head.

    Holds references to the LLM's own (frozen) modules, not copies. Scores need only the two
    answer-token rows of the LM head ([2, H] instead of [V, H]); the full vocabulary is computed
    only for the reverse-KL loss. Everything is returned in fp32.
    """

    def __init__(self, norm: nn.Module, lm_head: nn.Module, answer_tokens: AnswerTokens):
        super().__init__()
        self.norm = norm
        self.lm_head = lm_head
        self.answer_tokens = answer_tokens

    @classmethod
    def from_model(cls, model: nn.Module, answer_tokens: AnswerTokens) -> RabtrieverScorer:
        return cls(final_norm(model), model.get_output_embeddings(), answer_tokens)

    def normalize(self, pred: torch.Tensor) -> torch.Tensor:
        """Pre-norm [.., H] -> what the LM head consumes (comparable to `PairStates.hidden`)."""
        return self.norm(pred).float()

    def answer_logits(self, pred: torch.Tensor) -> torch.Tensor:
        """[.., 2] (yes, no) logits from a pre-norm prediction, via the two head rows only."""
        ids = torch.as_tensor(self.answer_tokens.ids, device=pred.device)
        weight = self.lm_head.weight[ids].float()
        bias = getattr(self.lm_head, "bias", None)
        return F.linear(self.normalize(pred), weight, None if bias is None else bias[ids].float())

    def vocab_logits(self, pred: torch.Tensor) -> torch.Tensor:
        """[.., V] full-vocabulary logits (for the reverse-KL loss)."""
        return self.lm_head(self.normalize(pred).to(self.lm_head.weight.dtype)).float()

    def score(self, pred: torch.Tensor) -> torch.Tensor:
        """log p(Yes) - log p(No), exactly the teacher's score function."""
        return yes_no_score(self.answer_logits(pred))


def predictor_state(predictor: Predictor) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors: what safetensors accepts."""
    return {k: v.detach().cpu().contiguous() for k, v in predictor.state_dict().items()}


def final_norm(model: nn.Module) -> nn.Module:
    norm = getattr(model.get_decoder(), "norm", None)
    if norm is None:
        raise ValueError(f"{type(model).__name__} has no final norm at .get_decoder().norm")
    return norm


def freeze(model: nn.Module) -> nn.Module:
    """Every LLM parameter frozen, eval mode (no dropout): the student is the teacher."""
    model.requires_grad_(False)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Encoding queries and documents with the frozen LLM
# --------------------------------------------------------------------------------------------


def _tokenize(tokenizer, prompts: list[str]) -> list[list[int]]:
    # The chat template already holds BOS-like markers; adding special tokens would double them.
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


def _length_batches(
    rows: Sequence[Sequence[int]], batch_size: int, tokenizer, model: nn.Module
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(input positions, ids, mask) in batches of similar length (little padding); left-padded."""
    device = _device(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        ids, mask = left_pad([rows[i] for i in index], tokenizer.pad_token_id)
        yield index, ids.to(device), mask.to(device)


def _final_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    autocast_bf16: bool,
    layers: Sequence[int] = (),
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
    """(pre-norm, post-norm) final states at every position, [B, T, H] each, fp32, and the
    states of the decoder `layers` asked for (0 = the embeddings; BEFORE any norm).

    Position ids from the mask by default, as `reranker.answer_logits` computes them: the query
    state must be the very state the teacher computes for the same prompt. With
    `past_key_values` (a cached prompt prefix; consumed) `mask` also covers the prefix.
    """
    decoder = model.get_decoder()
    captured: list[torch.Tensor] = []
    hook = final_norm(model).register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    if position_ids is None:
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            out = decoder(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=past_key_values is not None,
                output_hidden_states=bool(layers),
            )
    finally:
        hook.remove()
    states = {layer: out.hidden_states[layer] for layer in layers}
    return captured[0].float(), out.last_hidden_state.float(), states


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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
        pre, _, _ = _final_states(model, ids, mask, autocast_bf16)
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
        ids = torch.tensor([prefix], device=_device(model))
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            out = model.get_decoder()(
                input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True
            )
        return cls(prefix, out.past_key_values)


class _DeepEnough(Exception):
    """Raised by a layer hook once the deepest layer a pass needs has run."""


def _layer_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    layers: Sequence[int],
    autocast_bf16: bool,
) -> dict[int, torch.Tensor]:
    """The states after decoder layers `layers` (each >= 1; what `hidden_states[layer]` holds),
    [B, T, H], from a pass that stops after the deepest of them: layer 4 of 30 costs 4/30 of a
    full pass. Position ids from the mask, as `_final_states`."""
    decoder, deepest, captured = model.get_decoder(), max(layers), {}

    def capture(layer: int):
        def hook(_module, _args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == deepest:
                raise _DeepEnough

        return hook

    def module(layer: int) -> nn.Module:
        # As in `hidden_states`, the last layer's entry is the state after the final norm.
        return final_norm(model) if layer == len(decoder.layers) else decoder.layers[layer - 1]

    handles = [module(layer).register_forward_hook(capture(layer)) for layer in layers]
    try:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            decoder(input_ids=input_ids, attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)  # fmt: skip
    except _DeepEnough:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


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
        device, shift = _device(model), len(prefix)
        ids = torch.tensor([row[shift:]], device=device)
        mask = torch.ones(1, len(row), dtype=torch.long, device=device)
        positions = torch.arange(shift, len(row), device=device)[None]
        pre, post, _ = _final_states(
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
            pre, post, _ = _final_states(model, ids, mask, autocast_bf16)
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
        states = _layer_states(model, ids, mask, stored, autocast_bf16)
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
        _, post, states = _final_states(model, ids, mask, autocast_bf16, stored)
        pooled, kept_ids, kept_states = _kept_outputs(
            ids, mask, post, states, [skip[i] for i in index], pooling
        )
        out[index] = pooled
        tokens.put(index, kept_ids, kept_states)
    return out, tokens.done()


# --------------------------------------------------------------------------------------------
# The retriever
# --------------------------------------------------------------------------------------------


@dataclass
class QueryEncoding:
    """What scoring needs from one query: its answer-position state (query prompt) and, for the
    maxsim form, its token states (read as a document) and the pooled vector of its own segment
    of the query prompt."""

    state: torch.Tensor  # [H] pre-norm
    tokens: TokenStates | None = None
    pooled: torch.Tensor | None = None  # [H]


class Rabtriever:
    """Frozen teacher LLM + predictor + (optionally) a stored document index.

    The same small interface as the teacher: `rerank` a candidate list, `search` the corpus.
    Documents are referred to by id: their embeddings are computed once by `index_corpus`.
    The model passed in is frozen in place (requires_grad off, eval mode). `predictor=None`
    gives a fresh `Predictor(hidden_size)`, which scores exactly as the teacher does on the
    query alone until trained.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        template: PromptTemplate,
        predictor: Predictor | None = None,
        max_doc_tokens: int | None = 192,
        pooling: str = "mean",
        bf16: bool = False,
        device: str | torch.device | None = None,
        maxsim_doc_tokens: int | None = None,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.device = torch.device(device) if device is not None else _device(model)
        self.model = freeze(model.to(self.device))
        self.tokenizer = tokenizer
        self.template = template
        self.max_doc_tokens = max_doc_tokens
        self.pooling = pooling
        self.prompts = PromptBuilder(template, tokenizer, max_doc_tokens)
        # The token states the maxsim predictor compares may read further into a document than
        # the teacher's cut (None: the same cut): the student encodes each document alone, at a
        # cost linear in its length, while the pooled vector keeps the teacher's view.
        self.maxsim_doc_tokens = maxsim_doc_tokens or max_doc_tokens
        self.token_prompts = (
            self.prompts
            if self.maxsim_doc_tokens == max_doc_tokens
            else PromptBuilder(template, tokenizer, self.maxsim_doc_tokens)
        )
        self.answer_tokens = resolve_answer_token_ids(tokenizer, template)
        hidden = model.config.hidden_size
        self.predictor = (predictor or Predictor(hidden)).to(self.device).eval()
        if self.predictor.hidden_size != hidden:
            raise ValueError(f"predictor hidden {self.predictor.hidden_size} != model {hidden}")
        depth = model.config.num_hidden_layers
        too_deep = [layer for layer in self.predictor.layers if layer > depth]
        if too_deep:
            raise ValueError(f"maxsim layers {too_deep} exceed the model's {depth} layers")
        self.scorer = RabtrieverScorer.from_model(self.model, self.answer_tokens)
        self.bf16 = bf16 and bf16_available(self.device)
        if bf16 and not self.bf16:
            log.warning("bf16 asked for, but %s lacks native bf16; using fp32", self.device)
        self.doc_ids: list[str] = []
        self.doc_embeddings = torch.zeros(0, hidden)
        self.doc_tokens: TokenStates | None = None
        self._row: dict[str, int] = {}
        self._prefix_cache: PrefixCache | None = None  # built on the first maxsim query
        self._unit_vocab: torch.Tensor | None = None  # built on the first corpus scan

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        task: str = "default",
        template: PromptTemplate | None = None,
        predictor: Predictor | None = None,
        **kw,
    ) -> Rabtriever:
        """A student on the (trained) teacher checkpoint at `path`; see `load` for a saved one."""
        template = template or PromptTemplate.load(task)
        return cls(load_causal_lm(path), load_tokenizer(path), template, predictor, **kw)

    # -- encoding ---------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        return encode_queries(
            self.model, self.tokenizer, self.prompts, queries, batch_size, self.bf16
        )

    def encode_documents(self, documents: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        return encode_documents(
            self.model, self.tokenizer, self.prompts, documents, batch_size, self.pooling, self.bf16
        )

    @property
    def token_layers(self) -> list[int]:
        """Decoder layers whose token states the predictor compares (empty: pooled only)."""
        return self.predictor.layers if self.predictor.uses_tokens else []

    @property
    def separate_token_pass(self) -> bool:
        """Whether the compared token states come from their own pass, over a different cut of
        each document (`maxsim_doc_tokens`) than the pooled vector's (`max_doc_tokens`)."""
        return bool(self.token_layers) and self.token_prompts is not self.prompts

    def encode_corpus(
        self, documents: Sequence[str], batch_size: int = 16
    ) -> tuple[torch.Tensor, TokenStates | None]:
        """Pooled embeddings [N, H], plus token states when the predictor reads them."""
        if not self.token_layers:
            return self.encode_documents(documents, batch_size), None
        if self.separate_token_pass:
            pooled = self.encode_documents(documents, batch_size)
            return pooled, self.document_token_states(documents, batch_size)
        return encode_document_tokens(
            self.model, self.tokenizer, self.prompts, documents, self.token_layers, batch_size,
            self.pooling, self.bf16,
        )  # fmt: skip

    def document_token_states(self, documents: Sequence[str], batch_size: int = 16) -> TokenStates:
        """The token states the predictor compares, of documents cut at `maxsim_doc_tokens`,
        from a pass only as deep as the deepest compared layer."""
        return document_token_states(
            self.model, self.tokenizer, self.token_prompts, documents, self.token_layers,
            batch_size, self.bf16,
        )  # fmt: skip

    def encode_query(self, query: str) -> QueryEncoding:
        """One query, as `rerank` and `search` need it: one LLM pass over its prompt after the
        cached chat prefix (maxsim: its own segment's token states and pooled vector too)."""
        if not self.token_layers:
            return QueryEncoding(self.encode_queries([query])[0])
        if self._prefix_cache is None:
            self._prefix_cache = PrefixCache.build(
                self.model, self.tokenizer, self.prompts, self.bf16
            )
        state, pooled, tokens = self.encode_query_tokens([query], prefix_cache=self._prefix_cache)
        return QueryEncoding(state[0], tokens, pooled[0])

    def encode_query_tokens(
        self, queries: Sequence[str], batch_size: int = 16, prefix_cache: PrefixCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, TokenStates]:
        """(answer states [N, H], pooled [N, H], token states) of queries; see
        `encode_query_tokens`."""
        return encode_query_tokens(
            self.model, self.tokenizer, self.prompts, queries, self.token_layers, batch_size,
            self.pooling, self.bf16, prefix_cache, self.token_prompts,
        )  # fmt: skip

    def document_token_ids(self, documents: Sequence[str]) -> list[list[int]]:
        """The token ids `encode_document_tokens` keeps per document (no LLM pass): what the
        IDF table is fitted on."""
        return document_token_ids(self.tokenizer, self.token_prompts, documents)

    def fit_idf(self, documents: Sequence[str]) -> None:
        """Fit the maxsim predictor's IDF table on these documents (the whole corpus)."""
        if not self.predictor.uses_tokens:
            raise ValueError(f"the {self.predictor.form} predictor uses no IDF table")
        vocab = self.predictor.vocab_size
        self.predictor.idf.copy_(fit_idf(self.document_token_ids(documents), vocab))

    def features(
        self,
        query_tokens: TokenStates | None,
        query_pooled: torch.Tensor | None,
        doc_embs: torch.Tensor,
        doc_tokens: TokenStates | None,
    ) -> torch.Tensor | None:
        """[N, k] late-interaction features of one query (token states with one row, pooled [H])
        against these documents; None when the predictor reads no token states."""
        if not self.token_layers:
            return None
        if query_tokens is None or query_pooled is None or doc_tokens is None:
            raise ValueError("the maxsim predictor needs the query's and documents' token states")
        embedding = self.model.get_input_embeddings()
        # The LLM is frozen: a corpus scan normalises its embedding table once, not per query.
        if self._unit_vocab is None and scans_vocabulary(doc_tokens, self.token_layers, embedding):
            self._unit_vocab = unit_vocabulary(embedding)
        return maxsim_features(
            query_tokens, doc_tokens, query_pooled, doc_embs, self.predictor.idf,
            self.token_layers, embedding, unit_vocab=self._unit_vocab,
        )  # fmt: skip

    def pair_features(
        self,
        queries: Sequence[str],
        doc_embs: torch.Tensor,
        doc_tokens: TokenStates | None,
        query_index: torch.Tensor,
        doc_index: torch.Tensor,
        batch_size: int = 16,
    ) -> torch.Tensor | None:
        """[P, k] features of the pairs (queries[query_index[p]], document row doc_index[p]),
        each query encoded once; None when the predictor reads no token states."""
        if not self.token_layers:
            return None
        _, pooled, tokens = self.encode_query_tokens(queries, batch_size)
        out = torch.zeros(len(query_index), num_features(self.token_layers))
        for q in query_index.unique().tolist():
            rows = (query_index == q).nonzero().squeeze(1)
            docs = doc_index[rows]
            out[rows] = self.features(
                tokens.select([q]), pooled[q], doc_embs[docs], doc_tokens.select(docs)
            )
        return out

    def index_corpus(self, corpus: Mapping[str, str], batch_size: int = 16) -> None:
        """Encode and store every document (doc id -> text); replaces any previous index."""
        ids = list(corpus)
        self.set_index(ids, *self.encode_corpus([corpus[i] for i in ids], batch_size))

    def set_index(
        self,
        doc_ids: Sequence[str],
        embeddings: torch.Tensor | np.ndarray,
        tokens: TokenStates | None = None,
    ) -> None:
        embeddings = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if embeddings.shape != (len(doc_ids), self.predictor.hidden_size):
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} do not match {len(doc_ids)} ids x "
                f"hidden {self.predictor.hidden_size}"
            )
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("duplicate document ids in the index")
        if self.token_layers:
            if tokens is None or len(tokens) != len(doc_ids):
                raise ValueError(
                    f"the {self.predictor.form} predictor needs token states for every document"
                )
            missing = {layer for layer in self.token_layers if layer > 0} - set(tokens.states)
            if missing:
                raise ValueError(f"the index has no token states of layers {sorted(missing)}")
        self.doc_ids = list(doc_ids)
        self.doc_embeddings = embeddings
        self.doc_tokens = tokens if self.token_layers else None
        self._row = {d: i for i, d in enumerate(self.doc_ids)}

    # -- scoring ----------------------------------------------------------------------------

    @torch.inference_mode()
    def score(
        self,
        query: QueryEncoding | torch.Tensor,
        rows: Sequence[int] | torch.Tensor | None = None,
        batch_size: int = 4096,
    ) -> torch.Tensor:
        """Scores (CPU, fp32) of the indexed documents at `rows` (None: all) for one query
        (a `QueryEncoding`, or its [H] state for a predictor that reads no token states)."""
        if not isinstance(query, QueryEncoding):
            query = QueryEncoding(query)
        if rows is None:
            embs, tokens = self.doc_embeddings, self.doc_tokens
        else:
            rows = torch.as_tensor(rows, dtype=torch.long)
            embs = self.doc_embeddings[rows]
            tokens = None if self.doc_tokens is None else self.doc_tokens.select(rows)
        features = self.features(query.tokens, query.pooled, embs, tokens)
        state = query.state.reshape(1, -1).to(self.device, torch.float32)
        scores = torch.empty(len(embs))
        for start in range(0, len(embs), batch_size):
            part = slice(start, start + batch_size)
            docs = embs[part].to(self.device, torch.float32)
            feats = None if features is None else features[part].to(self.device)
            pred = self.predictor(state, docs, feats)
            scores[part] = self.scorer.score(pred).cpu()
        return scores

    def rerank(
        self, query_text: str, candidate_ids: Sequence[str], batch_size: int = 4096
    ) -> list[tuple[str, float]]:
        """Indexed candidates -> [(docid, score)], best first (ties broken by docid)."""
        if not candidate_ids:
            return []
        missing = [d for d in candidate_ids if d not in self._row]
        if missing:
            raise KeyError(f"{len(missing)} candidates are not in the index, e.g. {missing[:3]}")
        rows = [self._row[d] for d in candidate_ids]
        scores = self.score(self.encode_query(query_text), rows, batch_size)
        ranked = [(d, float(s)) for d, s in zip(candidate_ids, scores, strict=True)]
        return sorted(ranked, key=lambda pair: (-pair[1], pair[0]))

    def search(
        self, query_text: str, k: int = 100, batch_size: int = 4096
    ) -> list[tuple[str, float]]:
        """Exact full-corpus scan: the predictor scores every indexed document, top k kept.

        No ANN index: the score is not an inner product, so FAISS could not search it anyway;
        a scan is O(corpus) predictor calls, cheap next to one LLM forward for a mid-size corpus.
        """
        if not self.doc_ids:
            raise RuntimeError("no document index: call index_corpus, set_index or load_index")
        scores = self.score(self.encode_query(query_text), None, batch_size)
        top = torch.topk(scores, min(k, len(scores))).indices.tolist()
        ranked = [(self.doc_ids[i], float(scores[i])) for i in top]
        return sorted(ranked, key=lambda pair: (-pair[1], pair[0]))

    def search_run(self, queries: Mapping[str, str], k: int = 100) -> Run:
        """qid -> top-k [(docid, score)] for every query (components.runs format)."""
        return {qid: self.search(text, k) for qid, text in queries.items()}

    def rerank_run(self, queries: Mapping[str, str], run: Run, depth: int = 100) -> Run:
        """Rerank each query's top `depth` candidates of a first-stage run (candidates missing
        from the index are dropped: index the whole corpus the run was made from)."""
        return {
            qid: self.rerank(queries[qid], [d for d, _ in ranked[:depth] if d in self._row])
            for qid, ranked in run.items()
            if qid in queries
        }

    # -- persistence ------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "predictor": self.predictor.config,
            "pooling": self.pooling,
            "max_doc_tokens": self.max_doc_tokens,
            "maxsim_doc_tokens": self.maxsim_doc_tokens,
            "template": asdict(self.template),
            "template_fingerprint": self.template.fingerprint(),
            "answer_token_ids": self.answer_tokens.ids,
        }

    def index_meta(self) -> dict[str, Any]:
        """What the stored embeddings depend on; a mismatch on load means re-encode."""
        return {
            "format": FORMAT_VERSION,
            "pooling": self.pooling,
            "max_doc_tokens": self.max_doc_tokens,
            "maxsim_doc_tokens": self.maxsim_doc_tokens,
            "template_fingerprint": self.template.fingerprint(),
            "hidden_size": self.predictor.hidden_size,
            "token_layers": [layer for layer in self.token_layers if layer > 0],
            "count": len(self.doc_ids),
        }

    def save(self, path: str | Path, with_index: bool = True) -> Path:
        """Predictor weights + config (and the index, if any and asked for), atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            save_file(predictor_state(self.predictor), tmp / PREDICTOR_FILE)
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2))
            if with_index and self.doc_ids:
                self._write_index(tmp)
        return path

    def save_index(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            self._write_index(tmp)
        return path

    def _write_index(self, folder: Path) -> None:
        np.save(folder / EMBEDDINGS_FILE, self.doc_embeddings.numpy().astype(np.float32))
        (folder / DOC_IDS_FILE).write_text(json.dumps(self.doc_ids))
        (folder / INDEX_META_FILE).write_text(json.dumps(self.index_meta(), indent=2))
        if self.doc_tokens is not None:
            self.doc_tokens.save(folder)

    def load_index(self, path: str | Path) -> None:
        path = Path(path)
        meta = json.loads((path / INDEX_META_FILE).read_text())
        expected = self.index_meta()
        meta.setdefault("maxsim_doc_tokens", meta.get("max_doc_tokens"))  # one cut before
        keys = ("pooling", "max_doc_tokens", "maxsim_doc_tokens", "template_fingerprint",
                "hidden_size")  # fmt: skip
        for key in keys:
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
        tokens = TokenStates.load(path) if self.token_layers else None
        self.set_index(json.loads((path / DOC_IDS_FILE).read_text()), embeddings, tokens)

    @classmethod
    def load(
        cls,
        path: str | Path,
        model_path: str | Path | None = None,
        model: nn.Module | None = None,
        tokenizer=None,
        index_path: str | Path | None = None,
        bf16: bool = False,
        device: str | torch.device | None = None,
    ) -> Rabtriever:
        """A saved predictor on top of the teacher LLM (given, or loaded from `model_path`).

        The index is read from `index_path`, or from `path` when it holds one.
        """
        path = Path(path)
        config = json.loads((path / CONFIG_FILE).read_text())
        if config.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported rabtriever format {config.get('format')!r}")
        if model is None:
            if model_path is None:
                raise ValueError("give the teacher LLM: model or model_path")
            model = load_causal_lm(model_path)
            tokenizer = tokenizer or load_tokenizer(model_path)
        if tokenizer is None:
            raise ValueError("a tokenizer is needed with an explicit model")
        template = PromptTemplate(**config["template"])
        if template.fingerprint() != config["template_fingerprint"]:
            raise ValueError(f"{path}: prompt template does not match its recorded fingerprint")
        predictor = Predictor.from_config(config["predictor"])
        predictor.load_state_dict(load_file(path / PREDICTOR_FILE))
        retriever = cls(
            model,
            tokenizer,
            template,
            predictor,
            config["max_doc_tokens"],
            config["pooling"],
            bf16=bf16,
            device=device,
            maxsim_doc_tokens=config.get("maxsim_doc_tokens"),
        )
        if retriever.answer_tokens.ids != config["answer_token_ids"]:
            raise ValueError(
                f"answer ids {retriever.answer_tokens.ids} differ from the saved "
                f"{config['answer_token_ids']}: a different tokenizer than at training time"
            )
        index = Path(index_path) if index_path is not None else path
        if (index / EMBEDDINGS_FILE).exists():
            retriever.load_index(index)
        return retriever


__all__ = [
    "Predictor",
    "QueryEncoding",
    "Rabtriever",
    "RabtrieverScorer",
    "document_token_ids",
    "document_token_states",
    "encode_document_tokens",
    "encode_documents",
    "encode_queries",
    "encode_query_tokens",
    "final_norm",
    "freeze",
    "predictor_state",
]
