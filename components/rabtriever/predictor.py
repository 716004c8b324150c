"""The trainable part of the Rabtriever and the teacher's readout it feeds.

Every LLM parameter stays frozen (the student *is* the trained teacher, `freeze`); the only
trainable part is a `Predictor` between the last decoder layer and the final norm + LM head:

    predictor(q, d)  -> q' (predicted context-aware query state, pre-norm)
    score = log p(Yes) - log p(No) of  lm_head(final_norm(q'))     (`RabtrieverScorer`)

q is the query's answer-position state before the final norm, d the document's latent (see
`components/rabtriever/encoding.py`). The training target is the teacher's own answer-position
state with the document in the prompt (`LLMReranker.forward_pair_states(...).hidden`, AFTER the
final norm): the prediction is compared to it after the same frozen norm
(`RabtrieverScorer.normalize`, `components/rabtriever/jepa_loss.py`). Losses compare post-norm
vectors because the RMSNorm is scale-invariant: the norm of a pre-norm state never reaches the
LM head, and matching it would spend capacity on nothing.

The predictor's weights, its IDF table and feature statistics (maxsim form) are one safetensors
file (`predictor_state`); no pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from components.llm.hidden_states import final_norm
from components.llm.prompts import AnswerTokens
from components.rabtriever.attention import LatentAttention
from components.rabtriever.late_interaction import num_features
from components.teacher.reranker import yes_no_score

PREDICTOR_FORMS = ("attention", "maxsim", "mlp", "film")


class Predictor(nn.Module):
    """Maps a query state q, conditioned on a document latent, to a predicted pair state.

        q' = q + rms(q) * (W_out h(LN(q), document) + W_f (f - mu) / sigma),   W_out, W_f zero

    form="attention" (the paper's predictor, the default in `params.yaml`): the document latent
        is its token states D at decoder layer `latent_layer` (encoded alone, offline) and its
        pooled vector d; the query state attends over D (`LatentAttention`, `heads` x
        `head_dim`) and h = MLP([q; attention(q, D); d]) predicts what reading the document
        changes in the query's state. The W_f term is optional: late-interaction features f
        of the feature `layers` (below) as extra inputs, none when `layers` is empty.
    form="maxsim": h is absent; the update is linear in k standardised late-interaction
        features (MaxSim and IDF-weighted MaxSim per layer of `layers`, the pooled cosine;
        `late_interaction.py`). mu, sigma are fitted on the training pairs
        (`fit_feature_scaling`); the IDF table the features use travels with the weights
        (`idf`, fitted on the whole corpus). Width and depth are unused. With a few hundred
        teacher pairs this small map generalises where an MLP over pooled vectors overfits
        (docs/studies.md).
    form="mlp": h = MLP([q; d; q*d]) over the pooled vector only. The element-wise product is
        the cheapest explicit query-document interaction (as in InferSent/ESIM matching
        features). The first layer is split into W_q q + W_d d + W_qd (q*d), so in a corpus
        scan the W_q q term is computed once per query.
    form="film": h = GELU(W_q q) * (1 + gamma(d)) + beta(d) (FiLM: the document rescales and
        shifts the query's features), a weaker but smoother conditioning.

    Why the residual and the zero init: at initialisation q' = q, so the student starts as the
    teacher judging the query with no document (a sane score), and training only has to learn
    what the document changes. Why scale by rms(q): the final RMSNorm divides by rms anyway, so
    expressing the update in units of rms(q) makes the predictor's output scale independent of
    the residual stream's magnitude, which differs by orders of magnitude across models.

    Size at hidden 576 (SmolLM2): attention with 4 x 32 heads and width 256 about 0.7M
    parameters; mlp at width 1024 about 2.4M; maxsim with two layers 3.5k weights (plus the
    49k-entry IDF table, not trained).
    """

    def __init__(
        self,
        hidden_size: int,
        width: int = 1024,
        depth: int = 1,
        form: str = "mlp",
        dropout: float = 0.0,
        layers: Sequence[int] = (),
        vocab_size: int = 0,
        latent_layer: int | None = None,
        heads: int = 4,
        head_dim: int = 32,
    ):
        super().__init__()
        if form not in PREDICTOR_FORMS:
            raise ValueError(f"predictor form must be one of {PREDICTOR_FORMS}, got {form!r}")
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        if form == "maxsim" and not layers:
            raise ValueError("the maxsim form needs token layers")
        if form == "attention" and (latent_layer is None or latent_layer < 1):
            raise ValueError(f"the attention form needs a stored latent layer >= 1, "
                             f"got {latent_layer!r}")  # fmt: skip
        self.hidden_size, self.width, self.depth = hidden_size, width, depth
        self.form, self.dropout = form, dropout
        # Layers of the late-interaction features (maxsim form; extra inputs of the attention
        # form, none when empty).
        self.layers = [int(layer) for layer in layers] if form in ("maxsim", "attention") else []
        if self.layers and vocab_size < 1:
            raise ValueError("late-interaction features need the vocabulary size (IDF table)")
        self.vocab_size = vocab_size if self.layers else 0
        self.latent_layer = int(latent_layer) if form == "attention" else None
        self.heads, self.head_dim = (heads, head_dim) if form == "attention" else (0, 0)
        if self.layers:
            k = num_features(self.layers)
            self.register_buffer("feature_mean", torch.zeros(k))
            self.register_buffer("feature_std", torch.ones(k))
            self.register_buffer("idf", torch.zeros(vocab_size))
            self.features_out = nn.Linear(k, hidden_size)
            nn.init.zeros_(self.features_out.weight)
            nn.init.zeros_(self.features_out.bias)
        if form == "maxsim":
            return
        self.norm_q = nn.LayerNorm(hidden_size)
        self.norm_d = nn.LayerNorm(hidden_size)
        self.in_q = nn.Linear(hidden_size, width)
        if form == "mlp":
            self.in_d = nn.Linear(hidden_size, width, bias=False)
            self.in_qd = nn.Linear(hidden_size, width, bias=False)
        elif form == "attention":
            self.attention = LatentAttention(hidden_size, heads, head_dim)
            self.in_d = nn.Linear(hidden_size, width, bias=False)
            self.in_a = nn.Linear(self.attention.width, width, bias=False)
        else:
            self.film = nn.Linear(hidden_size, 2 * width)
            # Identity modulation at init: (1 + gamma) = 1, beta = 0.
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        blocks: list[nn.Module] = []
        for _ in range(depth - 1):
            blocks += [nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def config(self) -> dict[str, Any]:
        config = {
            "hidden_size": self.hidden_size,
            "width": self.width,
            "depth": self.depth,
            "form": self.form,
            "dropout": self.dropout,
        }
        if self.form in ("maxsim", "attention"):
            config.update(layers=self.layers, vocab_size=self.vocab_size)
        if self.form == "attention":
            config.update(latent_layer=self.latent_layer, heads=self.heads,
                          head_dim=self.head_dim)  # fmt: skip
        return config

    @property
    def uses_tokens(self) -> bool:
        """Whether scoring needs the documents' token states (maxsim and attention forms)."""
        return self.form in ("maxsim", "attention")

    @property
    def uses_features(self) -> bool:
        """Whether scoring needs the late-interaction features (and the IDF table they use)."""
        return bool(self.layers)

    @property
    def token_layers(self) -> list[int]:
        """Decoder layers whose token states scoring reads: the features' and the latent's."""
        latent = [] if self.latent_layer is None else [self.latent_layer]
        return sorted({*self.layers, *latent})

    def fit_feature_scaling(self, features: torch.Tensor) -> None:
        """Standardise the late-interaction features with the training pairs' mean and std."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).nan_to_num(1.0).clamp(min=1e-6))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Predictor:
        return cls(**config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        query: torch.Tensor,
        doc: torch.Tensor,
        features: torch.Tensor | None = None,
        latent: torch.Tensor | None = None,
        latent_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [B, H] or [1, H] (broadcast over documents), doc [B, H], features [B, k]
        (when `uses_features`), latent [B, T, H] token states at `latent_layer` with mask
        [B, T] (attention form) -> prediction [B, H]."""
        scale = query.pow(2).mean(-1, keepdim=True).sqrt()
        update = 0.0
        if self.layers:
            if features is None:
                raise ValueError(f"the {self.form} predictor needs late-interaction features")
            z = (features.to(query.dtype) - self.feature_mean) / self.feature_std
            update = self.features_out(z)
        if self.form == "maxsim":
            return query + scale * update
        q, d = self.norm_q(query), self.norm_d(doc)
        if self.form == "mlp":
            h = F.gelu(self.in_q(q) + self.in_d(d) + self.in_qd(q * d))
        elif self.form == "attention":
            if latent is None or latent_mask is None:
                raise ValueError("the attention predictor needs the documents' token states")
            a = self.attention(q, latent, latent_mask)
            h = F.gelu(self.in_q(q) + self.in_d(d) + self.in_a(a))
        else:
            gamma, beta = self.film(d).chunk(2, dim=-1)
            h = F.gelu(self.in_q(q)) * (1 + gamma) + beta
        h = self.blocks(F.dropout(h, self.dropout, self.training))
        return query + scale * (self.out(h) + update)


class RabtrieverScorer(nn.Module):
    """The teacher's readout applied to a predicted state: frozen final norm + LM head.

    Holds references to the LLM's own (frozen) modules, not copies. Scores need only the two
    answer-token rows of the LM head ([2, H] instead of [V, H]); the full vocabulary is computed
    only for the reverse-KL loss. Everything is returned in fp32.
    """

    def __init__(self, norm: nn.Module, lm_head: nn.Module, answer_tokens: AnswerTokens):
        super().__init__()
        self.norm = norm
        self.lm_head = lm_head
        self.answer_tokens = answer_tokens

    @classmethod
    def from_model(cls, model: nn.Module, answer_tokens: AnswerTokens) -> RabtrieverScorer:
        return cls(final_norm(model), model.get_output_embeddings(), answer_tokens)

    def normalize(self, pred: torch.Tensor) -> torch.Tensor:
        """Pre-norm [.., H] -> what the LM head consumes (comparable to `PairStates.hidden`)."""
        return self.norm(pred).float()

    def answer_logits(self, pred: torch.Tensor) -> torch.Tensor:
        """[.., 2] (yes, no) logits from a pre-norm prediction, via the two head rows only."""
        ids = torch.as_tensor(self.answer_tokens.ids, device=pred.device)
        weight = self.lm_head.weight[ids].float()
        bias = getattr(self.lm_head, "bias", None)
        return F.linear(self.normalize(pred), weight, None if bias is None else bias[ids].float())

    def vocab_logits(self, pred: torch.Tensor) -> torch.Tensor:
        """[.., V] full-vocabulary logits (for the reverse-KL loss)."""
        return self.lm_head(self.normalize(pred).to(self.lm_head.weight.dtype)).float()

    def score(self, pred: torch.Tensor) -> torch.Tensor:
        """log p(Yes) - log p(No), exactly the teacher's score function."""
        return yes_no_score(self.answer_logits(pred))


def predictor_state(predictor: Predictor) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors: what safetensors accepts."""
    return {k: v.detach().cpu().contiguous() for k, v in predictor.state_dict().items()}


def freeze(model: nn.Module) -> nn.Module:
    """Every LLM parameter frozen, eval mode (no dropout): the student is the teacher."""
    model.requires_grad_(False)
    return model.eval()


__all__ = [
    "PREDICTOR_FORMS",
    "Predictor",
    "RabtrieverScorer",
    "freeze",
    "predictor_state",
]
