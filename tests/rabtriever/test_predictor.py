"""Predictor: shapes, broadcasting, the identity start, size."""

from __future__ import annotations

import pytest
import torch

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
        Predictor(H, form="attention")
    with pytest.raises(ValueError, match="depth"):
        Predictor(H, depth=0)
