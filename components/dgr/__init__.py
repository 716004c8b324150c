"""DGR: distillation-enhanced generative retrieval.

A causal LM reads a query and decodes a passage identifier under a trie constraint
(`identifiers`, `trie`, `retriever`); a teacher's rank lists are distilled into it with a
rank-weighted RankNet loss (`training`, `components.dgr.ranknet`). `pyfunc` serves it.
"""
