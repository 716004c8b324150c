"""Model tests share the tiny-model fixtures of tests/conftest.py."""

import torch

# Two cores: more threads only add contention.
torch.set_num_threads(2)
