"""The reranker prompt: template loading, rendering, document truncation, answer-token ids.

Everything that turns a (document, query) pair into model input lives here, so training, scoring
and the students cannot drift apart. The wording is in `prompt_templates.yaml` (versioned); this
module only assembles it through the tokenizer's chat template:

    pair:      <prefix>{doc_label}: {document}<sep>{query_label}: {query}<sep>{question}...<suffix>
    document:  <prefix>{doc_label}: {document}
    query:     <prefix>{query_label}: {query}<sep>{question}...<suffix>

(<prefix>/<suffix>: the chat template around the user turn; <sep>: a blank line.)

The chat suffix ends with the assistant header, so the next token is the answer ("Yes"/"No").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATES_PATH = Path(__file__).with_name("prompt_templates.yaml")

# Stands in for the user message while the chat template is rendered once; splitting on it gives
# the text before and after the user turn. NUL never occurs in real text or chat templates.
_PLACEHOLDER = "\x00USER_MESSAGE\x00"


class AnswerTokenError(ValueError):
    """An answer word does not map to exactly one token after the prompt."""


@dataclass(frozen=True)
class PromptTemplate:
    """One task's prompt wording, as read from the template file."""

    task: str
    version: str
    system: str | None
    doc_label: str
    query_label: str
    question: str
    document_format: str
    separator: str
    query_format: str
    positive_answer: str
    negative_answer: str

    @classmethod
    def load(cls, task: str = "default", path: str | Path = TEMPLATES_PATH) -> PromptTemplate:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        tasks = raw["tasks"]
        if task not in tasks:
            raise KeyError(f"no prompt for task {task!r} in {path}; known: {sorted(tasks)}")
        fields = {**raw["defaults"], **tasks[task]}
        answers = fields.pop("answers")
        return cls(
            task=task,
            version=str(raw["version"]),
            system=fields.get("system"),
            doc_label=fields["doc_label"],
            query_label=fields["query_label"],
            question=fields["question"],
            document_format=fields["document_format"],
            separator=fields["separator"],
            query_format=fields["query_format"],
            positive_answer=answers["positive"],
            negative_answer=answers["negative"],
        )

    def document_segment(self, document: str) -> str:
        return self.document_format.format(doc_label=self.doc_label, document=document)

    def query_segment(self, query: str) -> str:
        return self.query_format.format(
            query_label=self.query_label, query=query, question=self.question
        )

    def user_message(self, document: str | None, query: str) -> str:
        """The user turn; without a document it is the query-side prompt."""
        if document is None:
            return self.query_segment(query)
        return self.document_segment(document) + self.separator + self.query_segment(query)

    def fingerprint(self) -> str:
        """Short hash of every field: changes whenever the rendered prompt can change."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """Flat dict for logging (e.g. MLflow params/artifact)."""
        return {**asdict(self), "fingerprint": self.fingerprint()}


@dataclass(frozen=True)
class AnswerTokens:
    yes_id: int
    no_id: int

    @property
    def ids(self) -> list[int]:
        """[yes, no]: the column order of every answer-logit tensor in this project."""
        return [self.yes_id, self.no_id]


class PromptBuilder:
    """Renders a template through one tokenizer's chat template; truncates documents by tokens.

    `max_doc_tokens` bounds the document alone (the query and the fixed prompt text are never
    cut), so a long abstract cannot push the claim or the question out of the context.
    """

    def __init__(self, template: PromptTemplate, tokenizer, max_doc_tokens: int | None = None):
        self.template = template
        self.tokenizer = tokenizer
        self.max_doc_tokens = max_doc_tokens
        self.chat_prefix, self.chat_suffix = split_chat_template(tokenizer, template.system)

    def truncate_document(self, document: str) -> str:
        # Strip first: trailing whitespace could merge with the separator into one BPE token,
        # and then the document prompt would stop being a token prefix of the pair prompt.
        document = " ".join(document.split())
        if self.max_doc_tokens is None:
            return document
        ids = self.tokenizer(document, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_doc_tokens:
            return document
        # A cut inside a multi-byte character decodes to U+FFFD; drop it rather than feed it on.
        return self.tokenizer.decode(ids[: self.max_doc_tokens]).rstrip("\ufffd").rstrip()

    def build_pair_prompt(self, document: str, query: str) -> str:
        """Full teacher prompt, ending where the answer token goes (after the generation prompt)."""
        user = self.template.user_message(self.truncate_document(document), query)
        return self.chat_prefix + user + self.chat_suffix

    def build_query_prompt(self, query: str) -> str:
        """The pair prompt minus the document segment (for a student encoding the query alone)."""
        return self.chat_prefix + self.template.user_message(None, query) + self.chat_suffix

    def build_query_head(self, query: str) -> str:
        """`build_query_prompt` up to the end of the query text ("{query_label}: {query}"): the
        query's own segment, whose token states the maxsim predictor compares with a document's.
        Causal attention: the question after it cannot reach these states."""
        fmt = self.template.query_format
        if "{query}" not in fmt:
            raise ValueError(f"query_format {fmt!r} has no {{query}} field")
        head = fmt.split("{query}", 1)[0].format(
            query_label=self.template.query_label, question=self.template.question
        )
        return self.chat_prefix + head + query

    def build_document_prompt(self, document: str) -> str:
        """The document part alone: an exact text prefix of `build_pair_prompt(document, q)`."""
        return self.chat_prefix + self.template.document_segment(self.truncate_document(document))

    def encode_pairs(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        """Token ids of `build_pair_prompt` for each (document, query); no padding."""
        prompts = [self.build_pair_prompt(doc, query) for doc, query in pairs]
        # The chat template already holds BOS-like markers; adding special tokens would double them.
        return self.tokenizer(prompts, add_special_tokens=False)["input_ids"]


def split_chat_template(tokenizer, system: str | None) -> tuple[str, str]:
    """Render the chat template once around a placeholder: (text before, text after) user turn."""
    messages = [{"role": "user", "content": _PLACEHOLDER}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    else:
        # Base models without a chat template: a plain layout with the same segments, after
        # the BOS token the model was pretrained with (Gemma degrades badly without it). The
        # prompt ends at "Answer:", so the answer word comes with its leading space.
        bos = tokenizer.bos_token or ""
        rendered = bos + (f"{system}\n\n" if system else "") + _PLACEHOLDER + "\nAnswer:"
    if rendered.count(_PLACEHOLDER) != 1:
        raise ValueError("the chat template must place the user message exactly once")
    prefix, suffix = rendered.split(_PLACEHOLDER)
    return prefix, suffix


_split_chat_template = split_chat_template  # older name, still imported elsewhere


def resolve_answer_token_ids(tokenizer, template: PromptTemplate) -> AnswerTokens:
    """Token ids of the positive/negative answers, checked on a rendered prompt.

    Each answer must be exactly one token *when it follows the prompt*: BPE tokenizers often have
    different ids for "Yes" and " Yes", or split a word after a newline, so the id is taken from
    tokenizing prompt+answer, not the answer alone. Raises AnswerTokenError otherwise.
    """
    prompt = PromptBuilder(template, tokenizer).build_pair_prompt("a document", "a query")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    resolved = []
    for answer in (template.positive_answer, template.negative_answer):
        # After a chat template's assistant header (ending in a newline) the answer is the bare
        # word; after the plain layout's "Answer:" it is the word with its leading space.
        spoken = answer if prompt[-1:].isspace() else " " + answer
        full_ids = tokenizer(prompt + spoken, add_special_tokens=False)["input_ids"]
        extra = full_ids[len(prompt_ids) :]
        if full_ids[: len(prompt_ids)] != prompt_ids or len(extra) != 1:
            pieces = tokenizer.convert_ids_to_tokens(extra)
            raise AnswerTokenError(
                f"answer {answer!r} (task {template.task!r}, template {template.version}) is "
                f"{len(extra)} tokens {pieces} after the prompt, or changes the prompt's last "
                "token; the score needs exactly one token per answer. Pick a single-token word "
                "(mind the leading space: 'Yes' and ' Yes' are different tokens)."
            )
        resolved.append(extra[0])
    if resolved[0] == resolved[1]:
        raise AnswerTokenError(f"positive and negative answers share token id {resolved[0]}")
    return AnswerTokens(yes_id=resolved[0], no_id=resolved[1])
