"""Training: the one DeepSpeed training loop (loop), its engine and its checkpoint format."""
