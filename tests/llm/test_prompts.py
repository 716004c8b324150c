"""The prompt: template file, rendering, truncation by token budget, answer-token resolution."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from components.llm.prompts import (
    AnswerTokenError,
    PromptBuilder,
    PromptTemplate,
    resolve_answer_token_ids,
)

TASKS = ["default", "scifact", "trec-dl", "esconv-strategy", "esconv-reply", "robot"]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_resolves_single_token_answers(tokenizer, task):
    template = PromptTemplate.load(task)
    answers = resolve_answer_token_ids(tokenizer, template)
    # Independent check: the ids are the tokens that follow the rendered prompt.
    prompt = PromptBuilder(template, tokenizer).build_pair_prompt("doc", "query")
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    yes = tokenizer(prompt + "Yes", add_special_tokens=False)["input_ids"]
    no = tokenizer(prompt + "No", add_special_tokens=False)["input_ids"]
    assert answers.ids == [yes[n], no[n]]
    assert tokenizer.decode([answers.yes_id]) == "Yes"


def test_scifact_wording_and_version():
    template = PromptTemplate.load("scifact")
    assert "supports or refutes the claim" in template.question
    logged = template.to_dict()
    assert logged["version"] and logged["task"] == "scifact"
    assert len(logged["fingerprint"]) == 12
    changed = dataclasses.replace(template, question="Is it relevant?")
    assert changed.fingerprint() != template.fingerprint()


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="scifact"):
        PromptTemplate.load("no-such-task")


def test_multi_token_answer_is_rejected(tokenizer):
    template = dataclasses.replace(PromptTemplate.load("scifact"), positive_answer="Yes indeed")
    with pytest.raises(AnswerTokenError, match="exactly one token"):
        resolve_answer_token_ids(tokenizer, template)


def test_leading_space_answer_is_a_different_token(tokenizer):
    # " Yes" is one token too, but a different one: resolving from the prompt catches the trap
    # of taking tokenizer("Yes") ids while the model actually sees "assistant\nYes".
    plain = resolve_answer_token_ids(tokenizer, PromptTemplate.load("default"))
    spaced = dataclasses.replace(PromptTemplate.load("default"), positive_answer=" Yes")
    assert resolve_answer_token_ids(tokenizer, spaced).yes_id != plain.yes_id


def test_document_is_truncated_by_token_budget_query_kept(tokenizer):
    builder = PromptBuilder(PromptTemplate.load("scifact"), tokenizer, max_doc_tokens=10)
    document = " ".join(f"word{i}" for i in range(200))
    query = "A long claim that must survive intact " * 5
    truncated = builder.truncate_document(document)
    assert len(tokenizer(truncated, add_special_tokens=False)["input_ids"]) <= 10
    assert document.startswith(truncated)
    prompt = builder.build_pair_prompt(document, query)
    assert query.strip() in prompt and truncated in prompt and "word199" not in prompt
    short = "A short abstract."
    assert builder.truncate_document(short) == short


def test_prompt_parts_are_consistent(tokenizer):
    builder = PromptBuilder(PromptTemplate.load("scifact"), tokenizer, max_doc_tokens=64)
    doc, query = "Aspirin lowers   the risk of\nheart attacks.  ", "Aspirin helps the heart."
    pair = builder.build_pair_prompt(doc, query)
    doc_part = builder.build_document_prompt(doc)
    query_part = builder.build_query_prompt(query)
    assert pair.endswith("<|im_start|>assistant\n")  # the answer position comes next
    assert pair.index("Abstract:") < pair.index("Claim:")  # document before query
    assert pair.startswith(doc_part)
    # The query prompt is the pair prompt with the document segment (and separator) cut out.
    separator = builder.template.separator
    assert query_part == builder.chat_prefix + pair[len(doc_part) + len(separator) :]
    # The document prompt is a token prefix of the pair prompt (students may cache it).
    doc_ids = tokenizer(doc_part, add_special_tokens=False)["input_ids"]
    pair_ids = tokenizer(pair, add_special_tokens=False)["input_ids"]
    assert pair_ids[: len(doc_ids)] == doc_ids


def test_base_model_without_chat_template_gets_bos_and_a_spoken_answer(tokenizer):
    """A base model (e.g. the Gemma 3 GGUF) has no chat template: the prompt starts with its
    BOS token and ends at "Answer:", and the answer is the word with its leading space."""
    base = copy.deepcopy(tokenizer)
    base.chat_template = None
    template = PromptTemplate.load("scifact")
    prompt = PromptBuilder(template, base).build_pair_prompt("An abstract.", "A claim.")
    assert prompt.startswith(base.bos_token) and prompt.endswith("\nAnswer:")
    answers = resolve_answer_token_ids(base, template)
    assert [base.decode([i]) for i in answers.ids] == [" Yes", " No"]
