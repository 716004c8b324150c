"""Rabtriever fixtures: the tiny 2-layer Llama of tests/conftest.py (real SmolLM2 tokenizer), a toy
collection, and the tiny teacher's outputs on it, cached once per session as the real pipeline
caches the trained teacher's. Students get the shipped predictor form (`params.yaml`:
`rabtriever.predictor_form: attention`, with the late-interaction features as extra inputs);
tests of the other forms build theirs explicitly."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from components.llm.base_model import (
    load_causal_lm,
    load_tokenizer,
)
from components.llm.prompts import PromptTemplate
from components.rabtriever.distillation_data import (
    JepaTrainingData,
    TeacherPairs,
    build_training_data,
)
from components.rabtriever.model import Rabtriever
from components.rabtriever.predictor import Predictor
from components.teacher.data import document_text, toy_retrieval_data
from components.teacher.reranker import LLMReranker, PairStates

MAX_DOC_TOKENS = 48
TOP_K = 64  # cached teacher logits per pair
# The shipped `rabtriever.maxsim_layers` ([0, 5]) and `latent_layer` (5) on the 2-layer tiny
# teacher: its token embeddings and its last decoder layer.
LAYERS = [0, 2]
LATENT_LAYER = 2


@dataclass
class ToyCollection:
    corpus: dict[str, str]  # doc id -> text
    queries: dict[str, str]  # qid -> text
    pools: dict[str, list[str]]  # qid -> the teacher-scored candidates


@dataclass
class TeacherCache:
    data: JepaTrainingData  # top-k teacher logits
    states: PairStates  # what the teacher returned, for independent checks


# Two cores are shared with other workers; more threads only add contention.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def template() -> PromptTemplate:
    return PromptTemplate.load("default")


@pytest.fixture(scope="session")
def toy() -> ToyCollection:
    corpus, queries, _, run = toy_retrieval_data(n_topics=6)
    texts = {docid: document_text(doc) for docid, doc in corpus.items()}
    return ToyCollection(texts, dict(queries), {q: [d for d, _ in run[q]] for q in queries})


@pytest.fixture(scope="session")
def teacher_model(tiny_model_master):
    """Shared by read-only tests; a test that trains or edits weights builds its own."""
    return load_causal_lm(tiny_model_master)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_master):
    return load_tokenizer(tiny_model_master)


def shipped_predictor(model, form: str = "attention") -> Predictor:
    """A fresh predictor of the shipped form (or the maxsim form) for `model`, small."""
    vocab = model.get_input_embeddings().num_embeddings
    return Predictor(model.config.hidden_size, width=32, form=form, layers=LAYERS,
                     vocab_size=vocab, latent_layer=LATENT_LAYER, heads=2,
                     head_dim=8)  # fmt: skip


def shipped_rabtriever(model, tokenizer, template, corpus: dict[str, str], form: str = "attention",
                       **kw) -> Rabtriever:  # fmt: skip
    """A student with a fresh predictor whose IDF table is fitted on `corpus`, as the
    `rabtriever` stage fits it on the corpus before training."""
    student = Rabtriever(model, tokenizer, template, shipped_predictor(model, form),
                         max_doc_tokens=MAX_DOC_TOKENS, **kw)  # fmt: skip
    student.fit_idf(list(corpus.values()))
    return student


@pytest.fixture
def make_rabtriever(teacher_model, tiny_tokenizer, template, toy):
    """Students on the shared tiny teacher: the shipped attention form (IDF fitted on the toy
    corpus) unless a `predictor` or another `form` is given."""

    def make(**kw) -> Rabtriever:
        if "predictor" not in kw:
            return shipped_rabtriever(teacher_model, tiny_tokenizer, template, toy.corpus, **kw)
        return Rabtriever(
            teacher_model, tiny_tokenizer, template, max_doc_tokens=MAX_DOC_TOKENS, **kw
        )

    return make


@pytest.fixture
def indexed_rabtriever(make_rabtriever, toy) -> Rabtriever:
    """A student whose predictor is moved off its identity start (as training would) and whose
    index holds the toy corpus: a non-trivial model to log, load and serve."""
    retriever = make_rabtriever()
    torch.manual_seed(0)
    with torch.no_grad():
        for param in retriever.predictor.parameters():
            param.add_(0.3 * torch.randn_like(param))
    retriever.index(toy.corpus)
    return retriever


@pytest.fixture(scope="session")
def teacher_cache(teacher_model, tiny_tokenizer, template, toy) -> TeacherCache:
    """Query/doc embeddings, the documents' token states and the pair features from the frozen
    LLM, and the teacher's pair states for every pool."""
    student = shipped_rabtriever(teacher_model, tiny_tokenizer, template, toy.corpus)
    data = build_training_data(student, toy.queries, toy.corpus, toy.pools, top_k=TOP_K)
    # The same pairs through the teacher directly, for independent checks.
    teacher = LLMReranker(teacher_model, tiny_tokenizer, template, max_doc_tokens=MAX_DOC_TOKENS)
    pairs = zip(data.pairs.query_index.tolist(), data.pairs.doc_index.tolist(), strict=True)
    texts = [(toy.corpus[data.doc_ids[d]], toy.queries[data.query_ids[q]]) for q, d in pairs]
    return TeacherCache(data, teacher.forward_pair_states(texts, batch_size=8, top_k=TOP_K))


@pytest.fixture
def full_vocab_data(teacher_cache, teacher_model) -> JepaTrainingData:
    """The same pairs with full-vocabulary teacher logits (head applied to the cached state)."""
    data = teacher_cache.data
    with torch.no_grad():
        logits = teacher_model.get_output_embeddings()(data.pairs.hidden).float()
    pairs = TeacherPairs(
        data.pairs.query_index, data.pairs.doc_index, data.pairs.hidden, logits,
        scores=data.pairs.scores,
    )  # fmt: skip
    return JepaTrainingData(data.query_embs, data.doc_embs, pairs, data.query_ids, data.doc_ids,
                            data.features, data.doc_tokens)  # fmt: skip
