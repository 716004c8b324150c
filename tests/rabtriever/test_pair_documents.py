"""Documents collected from the teacher's pair passes stand in for the student's own encoding."""

from __future__ import annotations

import pytest
import torch

from components.rabtriever.pair_documents import (
    CollectedDocuments,
    PairDocumentStates,
    encoding_meta,
    model_fingerprint,
    text_key,
)
from components.rabtriever.predictor import Predictor
from components.teacher.reranker import LLMReranker

from .conftest import MAX_DOC_TOKENS

LAYERS = [0, 2]  # the tiny teacher's embeddings and its last decoder layer


@pytest.fixture
def maxsim_student(make_rabtriever, teacher_model):
    vocab = teacher_model.get_input_embeddings().num_embeddings
    return make_rabtriever(predictor=Predictor(64, form="maxsim", layers=LAYERS,
                                               vocab_size=vocab))  # fmt: skip


def _collect(teacher_model, tiny_tokenizer, template, toy, batch_size=3) -> PairDocumentStates:
    """Every pool pair through the teacher, as `rank_lists` scores the test queries."""
    teacher = LLMReranker(teacher_model, tiny_tokenizer, template, max_doc_tokens=MAX_DOC_TOKENS)
    sink = PairDocumentStates(tiny_tokenizer, teacher.prompts, LAYERS, num_layers=2)
    pairs = [(toy.corpus[d], toy.queries[q]) for q, pool in toy.pools.items() for d in pool]
    scores = teacher.score_pairs(pairs, batch_size, documents=sink)
    # Collecting changes nothing about the scores.
    torch.testing.assert_close(torch.as_tensor(scores),
                               torch.as_tensor(teacher.score_pairs(pairs, batch_size)))  # fmt: skip
    return sink


def _saved(sink, student, tmp_path, model_dir) -> CollectedDocuments:
    meta = encoding_meta(student.prompts, 64, student.bf16, model_fingerprint(model_dir))
    return CollectedDocuments.load(sink.save(tmp_path / "documents", meta))


def _encoded_as_the_student_would(collected, student, texts) -> int:
    """Check `collected.encode` against the student's own pass; how many it encoded itself."""
    embs, tokens, encoded = collected.encode(student, texts)
    own_embs, own_tokens = student.encode_corpus(texts)
    torch.testing.assert_close(embs, own_embs, atol=1e-5, rtol=1e-4)
    assert torch.equal(tokens.token_ids, own_tokens.token_ids)
    torch.testing.assert_close(tokens.states[2].float(), own_tokens.states[2].float(),
                               atol=2e-3, rtol=0)  # fmt: skip (fp16 storage)
    return encoded


def test_collected_states_equal_the_students_own_document_pass(
    teacher_model, tiny_tokenizer, template, toy, maxsim_student, tiny_model_master, tmp_path
):
    sink = _collect(teacher_model, tiny_tokenizer, template, toy)
    texts = list(dict.fromkeys(toy.corpus[d] for pool in toy.pools.values() for d in pool))
    assert len(sink) + sink.unmatched == len(texts)
    assert len(sink) == len(texts)  # the template's separator never merges with these texts
    collected = _saved(sink, maxsim_student, tmp_path, tiny_model_master)
    assert collected.mismatch(maxsim_student, model_fingerprint(tiny_model_master)) is None

    assert _encoded_as_the_student_would(collected, maxsim_student, texts) == 0

    # "last" pooling is kept too.
    maxsim_student.pooling = "last"
    last, _, _ = collected.encode(maxsim_student, texts[:3])
    torch.testing.assert_close(last, maxsim_student.encode_corpus(texts[:3])[0],
                               atol=1e-5, rtol=1e-4)  # fmt: skip


def test_texts_the_teacher_never_read_are_encoded_and_kept_in_input_order(
    teacher_model, tiny_tokenizer, template, toy, maxsim_student, tiny_model_master, tmp_path
):
    sink = _collect(teacher_model, tiny_tokenizer, template, toy)
    collected = _saved(sink, maxsim_student, tmp_path, tiny_model_master)
    scored = list(dict.fromkeys(toy.corpus[d] for pool in toy.pools.values() for d in pool))
    unseen = ["A passage no query's pool holds, about tidal energy storage.",
              "Another one, on the grammar of bird song."]  # fmt: skip
    assert not {text_key(t) for t in unseen} & set(collected.keys)
    texts = [unseen[0], scored[4], scored[0], unseen[1], scored[2]]
    assert _encoded_as_the_student_would(collected, maxsim_student, texts) == 2


def test_a_document_whose_last_token_merges_with_the_separator_is_left_to_the_student(
    teacher_model, tiny_tokenizer, template
):
    teacher = LLMReranker(teacher_model, tiny_tokenizer, template, max_doc_tokens=MAX_DOC_TOKENS)
    sink = PairDocumentStates(tiny_tokenizer, teacher.prompts, LAYERS, num_layers=2)
    ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    states = [torch.zeros(1, 4, 64)] * 3
    sink.collect(["text whose document prompt is not these ids"], ids, mask, states)
    assert len(sink) == 0 and sink.unmatched == 1


def test_a_student_reading_past_the_teachers_cut_takes_only_the_pooled_vectors(
    teacher_model, tiny_tokenizer, template, toy, maxsim_student, make_rabtriever,
    tiny_model_master, tmp_path
):  # fmt: skip
    sink = _collect(teacher_model, tiny_tokenizer, template, toy)
    collected = _saved(sink, maxsim_student, tmp_path, tiny_model_master)
    longer = make_rabtriever(predictor=maxsim_student.predictor,
                             maxsim_doc_tokens=2 * MAX_DOC_TOKENS)  # fmt: skip
    assert collected.mismatch(longer, model_fingerprint(tiny_model_master)) is None
    scored = list(dict.fromkeys(toy.corpus[d] for pool in toy.pools.values() for d in pool))
    texts = [scored[3], "A passage no pool holds, on tidal energy storage.", scored[0]]
    embs, tokens, encoded = collected.encode(longer, texts)
    assert encoded == 1  # one full pass, for the text the teacher never read
    own_embs, own_tokens = longer.encode_corpus(texts)
    torch.testing.assert_close(embs, own_embs, atol=1e-5, rtol=1e-4)
    assert torch.equal(tokens.token_ids, own_tokens.token_ids)
    torch.testing.assert_close(tokens.states[2], own_tokens.states[2], atol=2e-3, rtol=0)


def test_states_from_another_setting_are_refused(
    teacher_model, tiny_tokenizer, template, toy, maxsim_student, make_rabtriever,
    tiny_model_master, tmp_path
):  # fmt: skip
    sink = _collect(teacher_model, tiny_tokenizer, template, toy)
    collected = _saved(sink, maxsim_student, tmp_path, tiny_model_master)
    fingerprint = model_fingerprint(tiny_model_master)
    assert "model" in collected.mismatch(maxsim_student, "another checkpoint")
    maxsim_student.prompts.max_doc_tokens = MAX_DOC_TOKENS + 1
    assert "max_doc_tokens" in collected.mismatch(maxsim_student, fingerprint)
    vocab = teacher_model.get_input_embeddings().num_embeddings
    deeper = make_rabtriever(predictor=Predictor(64, form="maxsim", layers=[0, 1],
                                                 vocab_size=vocab))  # fmt: skip
    assert "layers [1]" in collected.mismatch(deeper, fingerprint)


def test_layers_deeper_than_the_model_fail_fast(tiny_tokenizer, teacher_model, template):
    teacher = LLMReranker(teacher_model, tiny_tokenizer, template, max_doc_tokens=MAX_DOC_TOKENS)
    with pytest.raises(ValueError, match="exceed the model's 2 layers"):
        PairDocumentStates(tiny_tokenizer, teacher.prompts, [0, 4], num_layers=2)
