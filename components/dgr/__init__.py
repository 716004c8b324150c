"""DGR: distillation-enhanced generative retrieval.

A causal LM reads a query and decodes a passage identifier under a trie constraint:
`identifiers` (a passage's identifiers in several views), `trie` (their token sequences, for
constrained beam search), `scoring` (the retrieval prompt and teacher-forced identifier
log-probabilities, shared by retrieval and training), `retriever` (`GenerativeRetriever`:
beam search per view and the fusion of views into a ranking; served through MLflow by
`components.serving` like every system). `training` runs stage 1 (plain GR) and stage 2, which
distils a teacher's rank lists with a rank-weighted RankNet loss (`ranknet`) or listwise KL
(`listwise_kl`); `packing` and `frozen_trunk` make its steps cheaper, `precision` runs the
decoder layers in bf16.
"""
