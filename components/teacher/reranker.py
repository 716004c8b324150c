"""The teacher: a causal LM scoring (document, query) pairs by log p(Yes) - log p(No).

The prompt puts the document first, then the query and a yes/no question (see `prompts.py`);
the answer position is the last prompt token. Rows are left-padded, so that position is the last
column of every row and one forward pass over the decoder, plus the LM head on that single
position, gives every score: computing the 49k-wide LM head for all positions would cost more
than the rest of the forward pass.

`answer_logits` is the one scoring function: `LLMReranker` uses it under inference mode and the
trainer uses it with gradients, so training and scoring cannot disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from components.llm.base_model import load_causal_lm, load_tokenizer
from components.llm.padding import left_pad
from components.llm.precision import bf16_available
from components.llm.prompts import (
    AnswerTokens,
    PromptBuilder,
    PromptTemplate,
    resolve_answer_token_ids,
)
from components.progress import progress
from components.ranker import ranked
from components.runs import Run

log = logging.getLogger(__name__)


class DocumentStateSink(Protocol):
    """Receives each scored batch's decoder states with its document texts (Rabtriever keeps
    the document-token states there: `components.rabtriever.pair_documents`)."""

    def collect(self, documents: Sequence[str], input_ids: torch.Tensor,
                attention_mask: torch.Tensor, hidden_states) -> None: ...


@dataclass
class AnswerOutputs:
    """Per row, at the answer position (the last position)."""

    answer_logits: torch.Tensor  # [B, 2] fp32, columns (yes, no)
    hidden: torch.Tensor | None = None  # [B, H] after the final norm: what the LM head consumes
    hidden_prenorm: torch.Tensor | None = None  # [B, H] last decoder layer output, before the norm
    vocab_logits: torch.Tensor | None = None  # [B, V] fp32, when asked for
    hidden_states: tuple[torch.Tensor, ...] | None = None  # every layer's states, if asked


def answer_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    answer_tokens: AnswerTokens,
    autocast_bf16: bool = False,
    return_states: bool = False,
    return_vocab_logits: bool = False,
    return_hidden_states: bool = False,
) -> AnswerOutputs:
    """Answer-position logits for a left-padded batch (works with or without grad, with PEFT).

    The decoder may run under bf16 autocast; the LM head is applied in fp32 to the last hidden
    state only. bf16 logits are too coarse: many yes/no margins would tie.
    `return_hidden_states`: also every position's state after each decoder layer (transformers'
    `hidden_states`, the last after the final norm), for `PairDocumentStates`.
    """
    decoder = model.get_decoder()
    lm_head = model.get_output_embeddings()
    # Position ids from the mask: with left padding the default arange would start every real
    # token at an offset equal to its row's padding; RoPE makes that nearly but not exactly
    # harmless, and scores should not depend on which batch a pair landed in.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    prenorm: list[torch.Tensor] = []
    hook = None
    if return_states:
        norm = getattr(decoder, "norm", None)
        if norm is not None:
            hook = norm.register_forward_hook(lambda _m, args, _o: prenorm.append(args[0][:, -1]))
    device_type = input_ids.device.type
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast_bf16):
            out = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                output_hidden_states=return_hidden_states,
            )
            hidden = out.last_hidden_state[:, -1]
    finally:
        if hook is not None:
            hook.remove()
    with torch.autocast(device_type, enabled=False):
        # Outside autocast the head runs in its weights' dtype: fp32 for scoring (fp32 weights,
        # bf16 autocast only in the decoder). Weights that are bf16 themselves (DeepSpeed bf16
        # training on GPU) give bf16 logits, as in any bf16 training. Calling the module rather
        # than indexing its weight keeps ZeRO-3 parameter gathering working.
        logits = lm_head(hidden.to(lm_head.weight.dtype)).float()
    outputs = AnswerOutputs(answer_logits=logits[:, answer_tokens.ids])
    if return_states:
        outputs.hidden = hidden.float()
        outputs.hidden_prenorm = prenorm[0].float() if prenorm else None
    if return_vocab_logits:
        outputs.vocab_logits = logits
    if return_hidden_states:
        outputs.hidden_states = out.hidden_states
    return outputs


def yes_no_score(answer_logits_: torch.Tensor) -> torch.Tensor:
    """log p(Yes) - log p(No) from [B, 2] logits, via a two-way log-softmax in fp32."""
    log_probs = torch.log_softmax(answer_logits_.float(), dim=-1)
    return log_probs[:, 0] - log_probs[:, 1]


@dataclass
class PairStates:
    """Teacher outputs per pair, in input order (CPU, fp32), for distillation into students."""

    scores: torch.Tensor  # [N] log p(Yes) - log p(No)
    answer_logits: torch.Tensor  # [N, 2] (yes, no)
    hidden: torch.Tensor  # [N, H] answer-position state after the final norm (LM head input)
    hidden_prenorm: torch.Tensor | None  # [N, H] same position, last layer output before the norm
    topk_ids: torch.Tensor | None = None  # [N, k] vocab ids of the k largest logits
    topk_logits: torch.Tensor | None = None  # [N, k]


class LLMReranker:
    """Model + tokenizer + prompt template: scores pairs and reranks candidate lists
    (a `components.ranker.Ranker` that reads text: it cannot search)."""

    reads_text = True
    ARTIFACTS = ("model", "template")  # what `from_artifacts` reads (`components.serving`)

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        template: PromptTemplate,
        max_doc_tokens: int | None = 192,
        bf16: bool = False,
        device: str | torch.device | None = None,
    ):
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.template = template
        self.prompts = PromptBuilder(template, tokenizer, max_doc_tokens)
        self.answer_tokens = resolve_answer_token_ids(tokenizer, template)
        self.bf16 = bf16 and bf16_available(self.device)
        if bf16 and not self.bf16:
            log.warning(
                "bf16 autocast asked for, but %s lacks native bf16; using fp32", self.device
            )
        self.texts: dict[str, str] = {}  # doc id -> text, for `rerank` (`index`)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, task: str = "default", template: PromptTemplate | None = None, **kw
    ) -> LLMReranker:
        template = template or PromptTemplate.load(task)
        return cls(load_causal_lm(path), load_tokenizer(path), template, **kw)

    def _batches(self, pairs: Sequence[tuple[str, str]], batch_size: int):
        """Yield (input positions, input_ids, attention_mask), batches of similar length.

        Sorting by length (bucketing) keeps padding, and so wasted compute, small; callers get
        results back in input order.
        """
        encoded = self.prompts.encode_pairs(list(pairs))
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        starts = range(0, len(order), batch_size)
        for start in progress(starts, f"teacher: {len(order)} pairs", unit="batch"):
            index = order[start : start + batch_size]
            input_ids, mask = left_pad([encoded[i] for i in index], self.tokenizer.pad_token_id)
            yield index, input_ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int = 8,
        documents: DocumentStateSink | None = None,
    ) -> np.ndarray:
        """log p(Yes) - log p(No) per (document, query) pair, in input order. `documents`
        (optional) receives every batch's decoder states with the batch's document texts."""
        scores = np.zeros(len(pairs), dtype=np.float32)
        for index, input_ids, mask in self._batches(pairs, batch_size):
            out = answer_logits(self.model, input_ids, mask, self.answer_tokens, self.bf16,
                                return_hidden_states=documents is not None)  # fmt: skip
            scores[index] = yes_no_score(out.answer_logits).cpu().numpy()
            if documents is not None:
                documents.collect([pairs[i][0] for i in index], input_ids, mask, out.hidden_states)
        return scores

    @torch.inference_mode()
    def forward_pair_states(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int = 8,
        top_k: int = 0,
        documents: DocumentStateSink | None = None,
    ) -> PairStates:
        """Scores plus answer-position hidden states and logits, in input order (`documents`:
        as in `score_pairs`)."""
        n = len(pairs)
        rows: dict[str, list] = {"scores": [], "answer": [], "hidden": [], "pre": [], "tk": []}
        positions: list[int] = []
        for index, input_ids, mask in self._batches(pairs, batch_size):
            out = answer_logits(
                self.model,
                input_ids,
                mask,
                self.answer_tokens,
                self.bf16,
                return_states=True,
                return_vocab_logits=top_k > 0,
                return_hidden_states=documents is not None,
            )
            if documents is not None:
                documents.collect([pairs[i][0] for i in index], input_ids, mask, out.hidden_states)
            positions.extend(index)
            rows["scores"].append(yes_no_score(out.answer_logits).cpu())
            rows["answer"].append(out.answer_logits.cpu())
            rows["hidden"].append(out.hidden.cpu())
            if out.hidden_prenorm is not None:
                rows["pre"].append(out.hidden_prenorm.cpu())
            if top_k > 0:
                rows["tk"].append(out.vocab_logits.topk(top_k, dim=-1))
        inverse = torch.empty(n, dtype=torch.long)
        inverse[torch.as_tensor(positions)] = torch.arange(n)

        def cat(key: str) -> torch.Tensor | None:
            return torch.cat(rows[key])[inverse] if rows[key] else None

        states = PairStates(
            scores=cat("scores"),
            answer_logits=cat("answer"),
            hidden=cat("hidden"),
            hidden_prenorm=cat("pre"),
        )
        if top_k > 0:
            states.topk_logits = torch.cat([t.values.cpu() for t in rows["tk"]])[inverse]
            states.topk_ids = torch.cat([t.indices.cpu() for t in rows["tk"]])[inverse]
        return states

    # -- the `components.ranker.Ranker` interface -----------------------------------------

    def index(self, corpus: Mapping[str, str]) -> None:
        """Keep the documents' texts (doc id -> text) for `rerank`; replaces any kept before."""
        self.texts = dict(corpus)

    def rerank(self, queries: Mapping[str, str], candidates: Mapping[str, Sequence[str]],
               batch_size: int = 8) -> Run:  # fmt: skip
        """Each query's candidates (ids of `index`ed texts) by score, best first (ties broken
        by doc id). Every pair of every query goes through one `score_pairs` call."""
        rows = [(qid, docid) for qid in queries for docid in candidates[qid]]
        missing = [docid for _, docid in rows if docid not in self.texts]
        if missing:
            raise KeyError(f"no text for {len(missing)} candidates, e.g. {missing[:3]}: the "
                           f"teacher reads documents; give their texts to `index`")
        run: Run = {qid: [] for qid in queries}
        if rows:
            pairs = [(self.texts[docid], queries[qid]) for qid, docid in rows]
            for (qid, docid), score in zip(rows, self.score_pairs(pairs, batch_size), strict=True):
                run[qid].append((docid, float(score)))
        return {qid: ranked(scored) for qid, scored in run.items()}

    def search(self, queries: Mapping[str, str], k: int = 100) -> Run:
        raise NotImplementedError(
            "the teacher reranks candidates only: it scores (document, query) pairs with one "
            "LLM pass each and has no index to search; rerank a first stage's candidates"
        )

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str],
                       config: Mapping[str, Any]) -> LLMReranker:  # fmt: skip
        """The logged teacher: `model` (checkpoint + tokenizer), `template` (the prompt templates
        file); config: `task`, `max_doc_tokens`, `bf16`."""
        template = PromptTemplate.load(config["task"], path=artifacts["template"])
        return cls.from_pretrained(artifacts["model"], template=template,
                                   max_doc_tokens=config["max_doc_tokens"],
                                   bf16=bool(config.get("bf16", False)))  # fmt: skip
