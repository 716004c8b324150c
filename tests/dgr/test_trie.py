import json

import pytest
import torch

from components.dgr.trie import (
    IdentifierTrie,
    build_trie,
    encode_identifier,
    view_prefix_ids,
)
from components.llm.padding import left_pad

EOS = 0


@pytest.fixture
def small_trie():
    trie = IdentifierTrie(EOS)
    trie.view_prefixes = {"a": [9], "b": [8]}
    trie.insert([9, 1, 2, EOS], ("a", "x"))
    trie.insert([9, 1, EOS], ("a", "y"))  # a prefix of another entry: EOS tells them apart
    trie.insert([9, 3, EOS], ("a", "z"))
    trie.insert([8, 1, EOS], ("b", "x"))
    return trie


def test_insert_lookup_next_tokens(small_trie):
    assert len(small_trie) == 4
    assert small_trie.lookup([9, 1, EOS]) == [("a", "y")]
    assert small_trie.lookup([9, 1]) == []  # not complete
    assert sorted(small_trie.next_tokens([])) == [8, 9]
    assert sorted(small_trie.next_tokens([9, 1])) == sorted([2, EOS])
    assert small_trie.next_tokens([7]) == []
    assert small_trie.view_size("a") == 3 and small_trie.max_length == 4
    with pytest.raises(ValueError, match="EOS"):
        small_trie.insert([9, 4], ("a", "w"))


def test_same_sequence_keeps_every_key(small_trie):
    small_trie.insert([9, 3, EOS], ("a", "z2"))
    assert small_trie.lookup([9, 3, EOS]) == [("a", "z"), ("a", "z2")]


def test_allowed_tokens_skip_the_left_padded_prompt(small_trie):
    # Two prompts of different length, left-padded to one width: the generated part starts at
    # the same column in both rows, whatever the prompt tokens (which here collide with trie ids).
    input_ids, _ = left_pad([[9, 1, 5], [3]], pad_id=EOS)
    width = input_ids.shape[1]
    allowed = small_trie.prefix_allowed_tokens_fn(width)
    assert sorted(allowed(1, input_ids[1])) == [8, 9]
    row = torch.cat([input_ids[0], torch.tensor([9, 1])])
    assert sorted(allowed(0, row)) == sorted([2, EOS])
    assert allowed(0, torch.cat([input_ids[0], torch.tensor([7])])) == [EOS]  # off the trie


def test_view_restriction_forces_the_view_prefix(small_trie):
    prompt = torch.tensor([5, 5])
    allowed = small_trie.prefix_allowed_tokens_fn(2, view="b")
    assert allowed(0, prompt) == [8]
    assert allowed(0, torch.cat([prompt, torch.tensor([8])])) == [1]
    assert allowed(0, torch.cat([prompt, torch.tensor([9])])) == [EOS]  # another view's branch
    with pytest.raises(KeyError):
        small_trie.prefix_allowed_tokens_fn(2, view="c")


def test_view_prefix_already_in_the_prompt(small_trie):
    prompt = torch.tensor([5, 5, 8])  # the prompt ends with view b's prefix
    allowed = small_trie.prefix_allowed_tokens_fn(3, view="b", prefix_in_prompt=True)
    assert allowed(0, prompt) == [1]
    assert allowed(0, torch.cat([prompt, torch.tensor([9])])) == [EOS]  # off view b's branch
    with pytest.raises(ValueError, match="view"):
        small_trie.prefix_allowed_tokens_fn(3, prefix_in_prompt=True)


def test_json_round_trip(trie, tmp_path):
    trie.save(tmp_path / "trie.json")
    loaded = IdentifierTrie.load(tmp_path / "trie.json")
    assert dict(loaded.entries()) == dict(trie.entries())
    assert loaded.view_prefixes == trie.view_prefixes
    assert loaded.max_length == trie.max_length
    assert loaded.fingerprint == trie.fingerprint
    assert "entries" in json.loads((tmp_path / "trie.json").read_text(encoding="utf-8"))


def test_built_trie_holds_every_identifier(trie, identifier_index, tokenizer):
    for view in identifier_index.views:
        prefix = view_prefix_ids(tokenizer, view)
        for identifier in identifier_index.view_identifiers(view):
            ids = encode_identifier(tokenizer, view, identifier)
            assert ids[: len(prefix)] == prefix and ids[-1] == tokenizer.eos_token_id
            assert (view, identifier) in trie.lookup(ids)


def test_views_do_not_collide(tokenizer, identifier_index):
    # The same words as a title and as a span are two entries with two keys.
    from components.dgr.identifiers import IdentifierIndex

    index = IdentifierIndex({"title": {"d1": ["red fox"]}, "span": {"d2": ["red fox"]}})
    trie = build_trie(index, tokenizer)
    assert len(trie) == 2
    assert trie.lookup(encode_identifier(tokenizer, "span", "red fox")) == [("span", "red fox")]


def test_tokenizer_mismatch_is_refused(trie):
    class Other:
        eos_token_id = 7

        def __len__(self):
            return 100

    with pytest.raises(ValueError, match="tokenizer"):
        trie.check_tokenizer(Other())
