"""A small synthetic classification set for fast lottery tests (no generation, no files)."""

import torch

from compressor.data import Dataset


def tiny_data(n_train: int = 512, n_test: int = 256, features: int = 16, classes: int = 4,
              seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=gen) * 1.5
    def sample(n):
        y = torch.randint(0, classes, (n,), generator=gen)
        return centers[y] + torch.randn(n, features, generator=gen), y
    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return Dataset("tiny", x_train, y_train, x_test, y_test)


def tiny_mlp(features: int = 16, classes: int = 4):
    from torch import nn

    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, classes))
