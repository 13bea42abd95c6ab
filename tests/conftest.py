"""Test-wide settings: one torch thread per pytest worker (`make test` runs one worker per core)."""
import torch

torch.set_num_threads(1)
