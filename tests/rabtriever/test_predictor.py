"""Predictor: shapes, broadcasting, the identity start, size."""

from __future__ import annotations

import pytest
import torch

from components.rabtriever.attention import LatentAttention
from components.rabtriever.predictor import Predictor

H = 16


@pytest.mark.parametrize("form", ["mlp", "film"])
@pytest.mark.parametrize("depth", [1, 2])
def test_shapes_and_broadcast_over_documents(form, depth):
    torch.manual_seed(0)
    predictor = Predictor(H, width=24, depth=depth, form=form)
    # Leave the identity start (zero output and FiLM layers), to see the document's effect.
    for name, param in predictor.named_parameters():
        if name.startswith(("out.", "film.")):
            torch.nn.init.normal_(param)
    q, d = torch.randn(1, H), torch.randn(5, H)
    out = predictor(q, d)
    assert out.shape == (5, H)
    torch.testing.assert_close(out, predictor(q.expand(5, H), d))
    assert not torch.allclose(out[0], out[1])  # different documents, different predictions
    assert predictor(torch.randn(3, H), torch.randn(3, H)).shape == (3, H)


@pytest.mark.parametrize("form", ["mlp", "film"])
def test_starts_as_the_query_state(form):
    # Zero-initialised output: the untrained student is the teacher judging the query alone.
    q, d = torch.randn(4, H) * 50, torch.randn(4, H)
    torch.testing.assert_close(Predictor(H, width=8, form=form)(q, d), q)


def test_update_is_scaled_by_the_query_rms():
    # The final RMSNorm is scale-invariant; so is the predictor's effect on the readout direction.
    torch.manual_seed(0)
    predictor = Predictor(H, width=8, form="mlp")
    torch.nn.init.normal_(predictor.out.weight)
    q, d = torch.randn(2, H), torch.randn(2, H)
    torch.testing.assert_close(predictor(10 * q, d), 10 * predictor(q, d), rtol=1e-4, atol=1e-4)


def test_default_size_for_a_576_hidden_model_is_a_few_million():
    for form in ("mlp", "film"):
        assert 1_000_000 < Predictor(576, form=form).num_parameters() < 3_000_000


def test_config_round_trip_and_validation():
    predictor = Predictor(H, width=12, depth=2, form="film", dropout=0.1)
    assert Predictor.from_config(predictor.config).config == predictor.config
    with pytest.raises(ValueError, match="form"):
        Predictor(H, form="cross")
    with pytest.raises(ValueError, match="latent layer"):
        Predictor(H, form="attention")
    with pytest.raises(ValueError, match="depth"):
        Predictor(H, depth=0)


def test_latent_attention_is_multi_head_attention_with_projected_keys_and_values():
    # The folded computation equals textbook attention over K = D W_k^T, V = D W_v^T.
    torch.manual_seed(0)
    heads, dim, tokens = 3, 4, 7
    attention = LatentAttention(H, heads, dim)
    q, latent = torch.randn(2, H), torch.randn(2, tokens, H)
    mask = torch.ones(2, tokens, dtype=torch.bool)
    mask[1, 5:] = False
    out = attention(q, latent, mask)
    for b in range(2):
        keep = latent[b, mask[b]]
        query = attention.query(q[b]).view(heads, dim)
        keys = (keep @ attention.key.weight.T).view(-1, heads, dim)
        values = (keep @ attention.value.weight.T).view(-1, heads, dim)
        weights = torch.softmax(torch.einsum("hd,thd->ht", query, keys) / dim**0.5, dim=-1)
        expected = torch.einsum("ht,thd->hd", weights, values).reshape(-1)
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)
    # Padding is never attended to, whatever it holds.
    noisy = latent.clone()
    noisy[1, 5:] = 1e3
    torch.testing.assert_close(attention(q, noisy, mask), out)


def attention_predictor(**kw) -> Predictor:
    return Predictor(H, width=24, form="attention", latent_layer=3, heads=2, head_dim=4, **kw)


def test_attention_form_reads_the_document_tokens_and_starts_as_the_query_state():
    torch.manual_seed(0)
    predictor = attention_predictor()
    q, d = torch.randn(4, H) * 50, torch.randn(4, H)
    latent, mask = torch.randn(4, 6, H), torch.ones(4, 6, dtype=torch.bool)
    torch.testing.assert_close(predictor(q, d, None, latent, mask), q)
    torch.nn.init.normal_(predictor.out.weight)
    # One query state broadcast over documents; documents differing only in their tokens
    # get different predictions.
    one = predictor(q[:1], d[:1].expand(2, H), None, latent[:2], mask[:2])
    assert one.shape == (2, H) and not torch.allclose(one[0], one[1])
    expanded = predictor(q[:1].expand(2, H), d[:1].expand(2, H), None, latent[:2], mask[:2])
    torch.testing.assert_close(one, expanded, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="token states"):
        predictor(q, d)
    assert predictor.token_layers == [3] and not predictor.uses_features
    assert Predictor.from_config(predictor.config).config == predictor.config


def test_attention_form_with_features_reads_both():
    predictor = attention_predictor(layers=[0, 3], vocab_size=11)
    assert predictor.token_layers == [0, 3] and predictor.uses_features
    q, d = torch.randn(2, H), torch.randn(2, H)
    latent, mask = torch.randn(2, 5, H), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="features"):
        predictor(q, d, None, latent, mask)
    with torch.no_grad():
        predictor.features_out.weight.fill_(1.0)
    features = torch.randn(2, 5)
    rms = q.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(predictor(q, d, features, latent, mask),
                               q + rms * features.sum(-1, keepdim=True))  # fmt: skip
    # About 0.7M parameters at SmolLM2's width with the shipped sizes.
    shipped = Predictor(576, width=256, form="attention", latent_layer=5, heads=4, head_dim=32)
    assert 500_000 < shipped.num_parameters() < 900_000
