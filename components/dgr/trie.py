"""A prefix trie over identifier token sequences, for constrained beam search.

Every identifier becomes one token sequence

    view_prefix_ids(view) + tokens(" " + identifier) + [EOS]        e.g. "title:" " Foo bar" </s>

The view prefix keeps views apart (a title and a span with the same words are different
entries), and the two parts are tokenized separately and concatenated so that the prefix is an
exact token prefix of every entry of its view whatever BPE would merge across the boundary.
`encode_identifier` is the only place that builds these sequences: the trie, the retriever's
teacher-forced scores and the training targets all call it, so they cannot disagree.

EOS closes every entry, which lets one identifier be a prefix of another ("Cats" and
"Cats and dogs") and makes "the model stopped" part of the scored sequence.

Serialised as JSON (the entries and their values; the trie is rebuilt on load in linear time),
never pickle: the file is an MLflow artifact and may be read by other tools.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from components.atomic import write_text_atomic
from components.dgr.identifiers import IdentifierIndex

TRIE_FORMAT_VERSION = 1
VIEW_PREFIXES = {
    "title": "title:", "semantic_id": "id:", "span": "span:", "terms": "terms:", "ngram": "ngram:"
}

Key = tuple[str, str]  # (view, identifier)


def view_prefix_ids(tokenizer, view: str) -> list[int]:
    if view not in VIEW_PREFIXES:
        raise KeyError(f"unknown view {view!r}; known: {sorted(VIEW_PREFIXES)}")
    return tokenizer(VIEW_PREFIXES[view], add_special_tokens=False)["input_ids"]


def encode_identifiers(tokenizer, view: str, identifiers: Sequence[str]) -> list[list[int]]:
    """Token sequences (view prefix + identifier + EOS) of several identifiers of one view."""
    if not identifiers:
        return []
    prefix = view_prefix_ids(tokenizer, view)
    bodies = tokenizer([" " + i for i in identifiers], add_special_tokens=False)["input_ids"]
    return [prefix + body + [tokenizer.eos_token_id] for body in bodies]


def encode_identifier(tokenizer, view: str, identifier: str) -> list[int]:
    return encode_identifiers(tokenizer, view, [identifier])[0]


def tokenizer_fingerprint(tokenizer) -> dict:
    """What must match between the tokenizer that built a trie and the one that uses it."""
    return {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id}


class IdentifierTrie:
    """Token-sequence trie: which tokens may follow a prefix, and what a full sequence names."""

    def __init__(self, eos_token_id: int, fingerprint: dict | None = None):
        self.eos_token_id = eos_token_id
        self.fingerprint = fingerprint or {}
        self.view_prefixes: dict[str, list[int]] = {}
        self._root: dict[int, dict] = {}
        self._values: dict[tuple[int, ...], list[Key]] = {}
        self._view_sizes: dict[str, int] = {}
        self.max_length = 0

    def insert(self, token_ids: Sequence[int], key: Key) -> None:
        """Add one entry; a sequence reached by several keys keeps them all."""
        ids = tuple(int(t) for t in token_ids)
        if not ids or ids[-1] != self.eos_token_id or self.eos_token_id in ids[:-1]:
            raise ValueError(
                f"an entry must end with EOS ({self.eos_token_id}) exactly once: {ids}"
            )
        node = self._root
        for token in ids:
            node = node.setdefault(token, {})
        keys = self._values.setdefault(ids, [])
        if tuple(key) not in keys:
            keys.append(tuple(key))
            self._view_sizes[key[0]] = self._view_sizes.get(key[0], 0) + 1
        self.max_length = max(self.max_length, len(ids))

    def lookup(self, token_ids: Sequence[int]) -> list[Key]:
        """The keys of a complete entry (ending in EOS); [] for anything else."""
        return list(self._values.get(tuple(int(t) for t in token_ids), []))

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that extend `prefix` towards some entry; [] if `prefix` leads nowhere."""
        node = self._root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return []
        return list(node)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, token_ids: Sequence[int]) -> bool:
        return tuple(int(t) for t in token_ids) in self._values

    def entries(self) -> Iterator[tuple[tuple[int, ...], list[Key]]]:
        return iter(self._values.items())

    def view_size(self, view: str) -> int:
        """Number of identifiers of one view (beam search cannot return more than this)."""
        return self._view_sizes.get(view, 0)

    def prefix_allowed_tokens_fn(
        self, prompt_length: int, view: str | None = None, prefix_in_prompt: bool = False
    ) -> Callable[[int, torch.Tensor], list[int]]:
        """The callable for `model.generate(prefix_allowed_tokens_fn=...)`.

        transformers calls it with (batch index, the beam's FULL sequence so far), prompt
        included. Prompts are left-padded to one width, so in every row the generated part starts
        at the same column: `prompt_length` = the padded prompt width (input_ids.shape[1]).
        With `view`, only entries of that view are allowed: its prefix tokens are forced first,
        or, with `prefix_in_prompt`, already end the prompt (the caller scores them there, in
        one pass per query instead of one decoding step per token for every beam).
        A beam that has left the trie (only possible for beams beam search has already given up,
        with score -inf) or has finished may only emit EOS; such outputs are dropped by `lookup`.
        """
        if view is not None and view not in self.view_prefixes:
            raise KeyError(f"the trie has no entries for view {view!r}")
        if prefix_in_prompt and view is None:
            raise ValueError("prefix_in_prompt needs the view whose prefix the prompt holds")
        forced = self.view_prefixes[view] if view is not None else []
        dead_end = [self.eos_token_id]

        def allowed(batch_id: int, sequence: torch.Tensor) -> list[int]:
            generated = sequence[prompt_length:].tolist()
            if prefix_in_prompt:
                generated = forced + generated
            n = len(generated)
            if n < len(forced):
                return [forced[n]] if generated == forced[:n] else dead_end
            if generated[: len(forced)] != forced:
                return dead_end
            return self.next_tokens(generated) or dead_end

        return allowed

    def to_dict(self) -> dict:
        return {
            "format_version": TRIE_FORMAT_VERSION,
            "eos_token_id": self.eos_token_id,
            "tokenizer": self.fingerprint,
            "view_prefixes": self.view_prefixes,
            "entries": [[list(ids), [list(k) for k in keys]] for ids, keys in self._values.items()],
        }

    @classmethod
    def from_dict(cls, data: dict) -> IdentifierTrie:
        if data.get("format_version") != TRIE_FORMAT_VERSION:
            raise ValueError(f"unsupported trie format {data.get('format_version')}")
        trie = cls(int(data["eos_token_id"]), data.get("tokenizer"))
        trie.view_prefixes = {v: [int(t) for t in ids] for v, ids in data["view_prefixes"].items()}
        for ids, keys in data["entries"]:
            for key in keys:
                trie.insert(ids, (key[0], key[1]))
        return trie

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> IdentifierTrie:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def check_tokenizer(self, tokenizer) -> None:
        """Raise if `tokenizer` is not the kind that built this trie (ids would mean other text)."""
        current = tokenizer_fingerprint(tokenizer)
        if self.fingerprint and self.fingerprint != current:
            raise ValueError(f"trie built with tokenizer {self.fingerprint}, used with {current}")


def build_trie(
    index: IdentifierIndex, tokenizer, views: Iterable[str] | None = None
) -> IdentifierTrie:
    """One trie over every identifier of `views` (default: all views of the index)."""
    trie = IdentifierTrie(tokenizer.eos_token_id, tokenizer_fingerprint(tokenizer))
    for view in views if views is not None else index.views:
        trie.view_prefixes[view] = view_prefix_ids(tokenizer, view)
        identifiers = list(index.view_identifiers(view))
        for identifier, ids in zip(
            identifiers, encode_identifiers(tokenizer, view, identifiers), strict=True
        ):
            trie.insert(ids, (view, identifier))
    return trie
