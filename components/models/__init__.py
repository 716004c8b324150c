"""Models: the teacher's base checkpoint, its prompt, and the LLM reranker."""
