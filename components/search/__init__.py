"""First-stage retrieval: lexical (BM25) and dense baselines that produce TREC runs."""
