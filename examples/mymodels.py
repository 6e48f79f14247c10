"""A user-side model for ``steepest geometry`` (issue 14's BatchNorm CNN, 1,962 parameters).

Run from this folder (modules in the current directory are found)::

    cd examples && steepest geometry mymodels:small_cnn
"""

from __future__ import annotations

import torch
from torch import nn


def small_cnn(seed: int = 0, examples: int = 4000):
    """``(model, loss_fn, data)``: a 3-conv BatchNorm CNN on MNIST-1D (generated locally),
    ``examples`` training examples in batches of 1024 (a fixed list: deterministic passes)."""
    from steepest.problems import mnist1d

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, 8, 5, stride=2, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Conv1d(8, 16, 3, stride=2, padding=1), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Conv1d(16, 16, 3, stride=2, padding=1), nn.BatchNorm1d(16), nn.ReLU(),
        nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(64, 10),
    )
    x, y, _, _ = mnist1d(5000, 42)
    x, y = x[:examples], y[:examples]
    data = [(x[i : i + 1024], y[i : i + 1024]) for i in range(0, len(x), 1024)]
    return model, nn.functional.cross_entropy, data
