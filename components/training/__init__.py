"""Training: data assembly for the teacher and the DeepSpeed training loop."""
