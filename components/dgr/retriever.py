"""The generative retriever: a causal LM reads the query and decodes passage identifiers.

The prompt and the teacher-forced identifier scores are shared with training (`scoring`).
Retrieval runs one constrained beam search per view (beam size = ranking depth k; every beam is
returned), maps each generated identifier to its passages, and fuses the views:

    score(d) = log sum_v w_v * sum_{i in B_v(q), d in D_v(i)} p_v(i | q)
    p_v(i | q) = exp(l_v(i) - logsumexp_{i' in B_v(q)} l_v(i'))     (normalize=True)
               = exp(l_v(i))                                          (normalize=False)

with l_v(i) the log-probability of identifier i's token sequence (view prefix, identifier, EOS)
given the prompt, B_v(q) the beam of view v, D_v(i) the passages sharing identifier i, and w_v
the view weight. Normalising each view's beam first keeps views with long identifiers (titles)
from being drowned by views with short ones (semantic codes); a passage found by several views
or several identifiers accumulates probability mass. Identifiers shared by n passages give each
the full mass (not 1/n): the model cannot tell them apart, so neither should the ranking.

`rerank` scores given candidates with the same formula, B_v(q) replaced by the identifiers
training teaches for the candidates (`IdentifierIndex.targets(view, doc, query)[0]`), scored by
teacher forcing (`passage_logprobs`) instead of found by beam search. `GenerativeRetriever` is a
`components.ranker.Ranker`; its `index` only checks ids, as identifiers are built at training.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from components.dgr.identifiers import SEMANTIC_ID, SPAN, TITLE, IdentifierIndex
from components.dgr.precision import bf16_layers
from components.dgr.scoring import (
    DGR_PROMPT_VERSION,
    QueryPrompt,
    label_logprobs,
    sequence_logprobs,
    shared_prompt_logprobs,
)
from components.dgr.trie import IdentifierTrie, encode_identifier
from components.llm.base_model import load_causal_lm, load_tokenizer
from components.llm.padding import left_pad
from components.progress import progress
from components.runs import Run


@dataclass
class RetrieverConfig:
    """Retrieval knobs; logged with the pyfunc model as its config (`to_dict`)."""

    view_weights: dict[str, float] = field(
        default_factory=lambda: {TITLE: 1.0, SEMANTIC_ID: 1.0, SPAN: 1.0}
    )  # views searched (weight > 0) and their mixture weights w_v
    normalize: bool = True  # softmax-normalise each view's beam before mixing (see module doc)
    max_query_tokens: int = 64  # longer queries (and indexed passage texts) are cut
    batch_size: int = 8  # queries per generate() call
    use_chat_template: bool = True
    bf16: bool = False  # from_pretrained: decoder layers in bf16 where native (`precision`)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prompt_version": DGR_PROMPT_VERSION}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetrieverConfig:
        version = data.get("prompt_version", DGR_PROMPT_VERSION)
        if version != DGR_PROMPT_VERSION:
            # A model trained on other prompt text would be queried off-distribution.
            raise ValueError(
                f"config is for prompt {version!r}, this code has {DGR_PROMPT_VERSION!r}"
            )
        return cls(**{k: v for k, v in data.items() if k != "prompt_version"})


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if math.isinf(top):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def aggregate_views(
    hits: Mapping[str, Sequence[tuple[str, float]]],
    index: IdentifierIndex,
    weights: Mapping[str, float],
    normalize: bool = True,
) -> dict[str, float]:
    """Passage scores from per-view beams {view: [(identifier, log-prob), ...]} (see module doc).

    Views with weight <= 0 (or missing from `weights`) are ignored.
    """
    terms: dict[str, list[float]] = {}
    for view, view_hits in hits.items():
        weight = weights.get(view, 0.0)
        if weight <= 0 or not view_hits:
            continue
        log_z = _logsumexp([lp for _, lp in view_hits]) if normalize else 0.0
        for identifier, lp in view_hits:
            for doc_id in index.docs(view, identifier):
                terms.setdefault(doc_id, []).append(math.log(weight) + lp - log_z)
    return {doc_id: _logsumexp(values) for doc_id, values in terms.items()}


def top_k(scores: Mapping[str, float], k: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))[:k]


class GenerativeRetriever:
    """query -> passages by constrained decoding of identifiers; the DGR student at inference."""

    reads_text = False
    ARTIFACTS = ("model", "trie", "identifiers")  # what `from_artifacts` reads

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        trie: IdentifierTrie,
        index: IdentifierIndex,
        config: RetrieverConfig | None = None,
    ):
        trie.check_tokenizer(tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.trie = trie
        self.identifier_index = index
        self.config = config or RetrieverConfig()
        self.prompt = QueryPrompt(
            tokenizer, self.config.max_query_tokens, self.config.use_chat_template
        )
        self.pad_id = tokenizer.pad_token_id

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        trie_path: str | os.PathLike,
        index_path: str | os.PathLike,
        config: RetrieverConfig | None = None,
        device: str | torch.device | None = None,
    ) -> GenerativeRetriever:
        config = config or RetrieverConfig()
        model = load_causal_lm(model_dir, device=device)
        bf16_layers(model, config.bf16)
        return cls(
            model,
            load_tokenizer(model_dir),
            IdentifierTrie.load(trie_path),
            IdentifierIndex.load(index_path),
            config,
        )

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str],
                       config: Mapping[str, Any]) -> GenerativeRetriever:  # fmt: skip
        """The logged retriever: `model` (the causal LM folder), `trie` and `identifiers` (their
        JSON files); config: `RetrieverConfig.to_dict()`."""
        return cls.from_pretrained(artifacts["model"], artifacts["trie"], artifacts["identifiers"],
                                   RetrieverConfig.from_dict(config))  # fmt: skip

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def identifier_logprob(self, query: str, identifier_token_ids: Sequence[int]) -> torch.Tensor:
        """log p(identifier tokens | prompt(query)), a 0-dim tensor with gradients when enabled.

        `identifier_token_ids` is a full entry (view prefix + identifier + EOS, as built by
        `encode_identifier`); the value equals that identifier's beam-search score.
        """
        return sequence_logprobs(
            self.model, self.prompt.encode([query]), [list(identifier_token_ids)], self.pad_id
        )[0]

    def passage_logprobs(self, query: str, doc_ids: Sequence[str], view: str) -> torch.Tensor:
        """[n] identifier log-probs of passages (in `view`, the identifier DGR trains on:
        `IdentifierIndex.targets(view, doc, query)[0]`)."""
        targets = []
        for doc_id in doc_ids:
            identifiers = self.identifier_index.targets(view, doc_id, query, limit=1)
            if not identifiers:
                raise KeyError(f"passage {doc_id!r} has no identifier in view {view!r}")
            targets.append(encode_identifier(self.tokenizer, view, identifiers[0]))
        logprobs, _ = shared_prompt_logprobs(
            self.model, self.prompt.encode([query]), targets, [0] * len(targets), self.pad_id
        )
        return logprobs.sum(-1)

    def _prompt_cache(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, beams: int, forced: int
    ) -> tuple[DynamicCache, torch.Tensor]:
        """The key/value cache of every prompt token but the last, one copy per beam, and [B]
        log p of the prompt's last `forced` tokens (the view prefix) given what precedes them.

        generate() copies each prompt to its beams before its first forward, so it would run
        the prompt once per beam (10x the work at beam 10, more than all decoding steps
        together on CPU), and it would spend a decoding step for every beam on each token of
        the view prefix, which every beam must emit. Here the prompt, view prefix included,
        runs once; its cache is copied and generate() feeds only the last token. Positions
        follow the attention mask as in generate().
        """
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        out = self.model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, :-1],
            use_cache=True,
            logits_to_keep=max(forced, 1),
        )
        forced_logprob = torch.zeros(input_ids.shape[0], device=input_ids.device)
        if forced:
            logprobs, _ = label_logprobs(out.logits[:, -forced:].float(), input_ids[:, -forced:])
            forced_logprob = logprobs.sum(-1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(beams)
        return cache, forced_logprob

    @torch.inference_mode()
    def generate_identifiers(
        self, queries: Sequence[str], view: str, num_beams: int
    ) -> list[list[tuple[str, float]]]:
        """Per query, up to `num_beams` (identifier, log-prob) of `view`, best first."""
        beams = min(num_beams, self.trie.view_size(view))
        if beams == 0 or not queries:
            return [[] for _ in queries]
        # generate() switches to greedy search (no sequence scores) for one beam; a second beam
        # that finds nothing valid is dropped below.
        beams = max(beams, 2)
        forced = self.trie.view_prefixes[view]
        prompts = [prompt + forced for prompt in self.prompt.encode(queries)]
        input_ids, attention_mask = left_pad(prompts, self.pad_id)
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        prompt_length = input_ids.shape[1]
        cache, forced_logprob = self._prompt_cache(input_ids, attention_mask, beams, len(forced))
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=cache,
            prefix_allowed_tokens_fn=self.trie.prefix_allowed_tokens_fn(
                prompt_length, view, prefix_in_prompt=True
            ),
            num_beams=beams,
            num_return_sequences=beams,
            max_new_tokens=self.trie.max_length - len(forced),
            do_sample=False,
            length_penalty=0.0,  # raw sum of log-probs, comparable with identifier_logprob
            early_stopping=False,  # with length_penalty 0 the stop test is then exact
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=self.pad_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        results: list[list[tuple[str, float]]] = [[] for _ in queries]
        eos = self.tokenizer.eos_token_id
        for row, (tokens, score) in enumerate(
            zip(
                out.sequences[:, prompt_length:].tolist(),
                out.sequences_scores.tolist(),
                strict=True,
            )
        ):
            if not math.isfinite(score) or eos not in tokens:
                continue  # a beam that beam search had abandoned (fewer valid ids than beams)
            entry = forced + tokens[: tokens.index(eos) + 1]
            query = row // beams
            seen = {identifier for identifier, _ in results[query]}
            for key_view, identifier in self.trie.lookup(entry):
                if key_view == view and identifier not in seen:
                    results[query].append((identifier, score + forced_logprob[query].item()))
        for hits in results:
            hits.sort(key=lambda pair: -pair[1])
            del hits[num_beams:]
        return results

    def views(self) -> list[str]:
        """The views searched and scored: weight > 0 and present in the trie."""
        weights = self.config.view_weights
        views = [v for v, w in weights.items() if w > 0 and v in self.trie.view_prefixes]
        if not views:
            raise ValueError(f"no view with weight > 0 is in the trie: {weights}")
        return views

    def index(self, corpus: Mapping[str, str]) -> None:
        """Check that `corpus` holds exactly the passages of the identifier index.

        DGR's documents are its identifiers, built with the model at training time: another
        corpus needs new identifiers and training, so nothing is encoded here. The check keeps
        a caller from believing DGR indexed passages it can never return.
        """
        known, given = self.identifier_index.doc_ids(), set(corpus)
        if given != known:
            unknown, absent = sorted(given - known), sorted(known - given)
            raise ValueError(
                f"DGR's identifiers cover {len(known)} passages; this corpus has {len(unknown)} "
                f"unknown ({unknown[:3]}) and lacks {len(absent)} ({absent[:3]}): another corpus "
                f"needs new identifiers and training (flows.dgr)"
            )

    @torch.inference_mode()
    def rerank(self, queries: Mapping[str, str],
               candidates: Mapping[str, Sequence[str]]) -> Run:  # fmt: skip
        """Each query's candidates by the fused identifier probability (module doc), best first
        (ties broken by doc id); a candidate with no identifier in any searched view scores
        -inf, one unknown to the identifier index raises KeyError."""
        views, known = self.views(), self.identifier_index.doc_ids()
        run: Run = {}
        for qid, query in queries.items():
            ids = list(candidates[qid])
            unknown = [d for d in ids if d not in known]
            if unknown:
                raise KeyError(f"{len(unknown)} candidates have no identifiers, e.g. "
                               f"{unknown[:3]}: DGR was not trained on them")
            hits: dict[str, list[tuple[str, float]]] = {}
            for view in views:
                owner: dict[str, str] = {}  # each identifier once, as in a beam
                for doc_id in ids:
                    targets = self.identifier_index.targets(view, doc_id, query, limit=1)
                    if targets:
                        owner.setdefault(targets[0], doc_id)
                if owner:
                    logprobs = self.passage_logprobs(query, list(owner.values()), view)
                    hits[view] = list(zip(owner, logprobs.tolist(), strict=True))
            scores = aggregate_views(hits, self.identifier_index, self.config.view_weights,
                                     self.config.normalize)
            run[qid] = top_k({d: scores.get(d, -math.inf) for d in ids}, len(ids))
        return run

    def search(self, queries: Mapping[str, str], k: int = 10) -> Run:
        """Top-k passages per query id, best first (beam size = k in every searched view)."""
        weights = self.config.view_weights
        views = self.views()
        qids = list(queries)
        run: Run = {}
        starts = range(0, len(qids), self.config.batch_size)
        for start in progress(starts, f"decoding {len(qids)} queries", unit="batch"):
            batch = qids[start : start + self.config.batch_size]
            texts = [queries[q] for q in batch]
            per_view = {view: self.generate_identifiers(texts, view, k) for view in views}
            for i, qid in enumerate(batch):
                hits = {view: per_view[view][i] for view in views}
                scores = aggregate_views(hits, self.identifier_index, weights,
                                         self.config.normalize)
                run[qid] = top_k(scores, k)
        return run
