"""Reusable test problems (in the spirit of DeepOBS): a model, data, a loss and a default budget.

Every problem uses data that ships with a package or is generated locally, so nothing is
downloaded: scikit-learn's bundled datasets (digits, breast cancer, wine) and MNIST-1D generated
by ``mnist1d.data.make_dataset`` (never its download path).

>>> from steepest.problems import get_problem
>>> inst = get_problem("digits-mlp").build(seed=0)
>>> loss = inst.loss_fn(inst.model(inst.train.tensors[0]), inst.train.tensors[1])

Experiments, the demo and ``steepest geometry`` share these objects; add a problem with
:func:`register_problem`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "Problem",
    "ProblemInstance",
    "get_problem",
    "list_problems",
    "register_problem",
]


@dataclass
class ProblemInstance:
    """A problem built for one seed: a freshly initialised model and its data."""

    model: nn.Module
    train: TensorDataset
    test: TensorDataset
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    batch_size: int
    steps: int
    metric: Callable[[Tensor, Tensor], float] | None = None

    def loader(self, batch_size: int | None = None, *, seed: int = 0, shuffle: bool = True) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        return DataLoader(self.train, batch_size=batch_size or self.batch_size, shuffle=shuffle, generator=g)

    def batches(self, batch_size: int | None = None, *, seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """An endless stream of shuffled training batches."""
        epoch = 0
        while True:
            yield from self.loader(batch_size, seed=seed + epoch)
            epoch += 1

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        """Loss (and accuracy for classification) on a whole split."""
        data = self.test if split == "test" else self.train
        x, y = data.tensors
        out = self.model(x)
        res = {"loss": float(self.loss_fn(out, y))}
        if self.metric is not None:
            res["accuracy"] = self.metric(out, y)
        return res


@dataclass
class Problem:
    name: str
    description: str
    make_model: Callable[[], nn.Module]
    load_data: Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    batch_size: int = 64
    steps: int = 500
    metric: Callable[[Tensor, Tensor], float] | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def build(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> ProblemInstance:
        xtr, ytr, xte, yte = self.load_data(seed)
        torch.manual_seed(seed)
        model = self.make_model().to(dtype)
        cast = (lambda t: t.to(dtype)) if dtype != torch.float32 else (lambda t: t)
        ytr_c = cast(ytr) if ytr.is_floating_point() else ytr
        yte_c = cast(yte) if yte.is_floating_point() else yte
        return ProblemInstance(
            model=model,
            train=TensorDataset(cast(xtr), ytr_c),
            test=TensorDataset(cast(xte), yte_c),
            loss_fn=self.loss_fn,
            batch_size=self.batch_size,
            steps=self.steps,
            metric=self.metric,
        )


_PROBLEMS: dict[str, Problem] = {}


def register_problem(problem: Problem) -> Problem:
    _PROBLEMS[problem.name] = problem
    return problem


def get_problem(name: str) -> Problem:
    if name not in _PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; known: {list_problems()}")
    return _PROBLEMS[name]


def list_problems() -> list[str]:
    return sorted(_PROBLEMS)


# ------------------------------------------------------------------------------ data
def accuracy(out: Tensor, y: Tensor) -> float:
    return float((out.argmax(dim=-1) == y).float().mean())


def _split_standardize(x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float = 0.25):
    """A seeded train/test split with features standardized on the training part."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    te, tr = idx[:n_test], idx[n_test:]
    mu, sd = x[tr].mean(0), x[tr].std(0)
    sd[sd == 0] = 1.0
    x = (x - mu) / sd
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return as_t(x[tr]), torch.as_tensor(y[tr]), as_t(x[te]), torch.as_tensor(y[te])


def _sklearn(loader_name: str) -> Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]]:
    def load(seed: int):
        import sklearn.datasets

        ds = getattr(sklearn.datasets, loader_name)()
        return _split_standardize(ds.data.astype(np.float64), ds.target.astype(np.int64), seed)

    return load


def _digits_images(seed: int):
    xtr, ytr, xte, yte = _split_standardize(*_raw_digits(), seed)
    return xtr.reshape(-1, 1, 8, 8), ytr, xte.reshape(-1, 1, 8, 8), yte


def _raw_digits():
    import sklearn.datasets

    ds = sklearn.datasets.load_digits()
    return ds.data.astype(np.float64), ds.target.astype(np.int64)


def mnist1d(num_samples: int = 5000, seed: int = 42) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST-1D generated locally with ``mnist1d.data.make_dataset`` (no download)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    ds = make_dataset(args)
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    i = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.int64)  # noqa: E731
    return f(ds["x"]), i(ds["y"]), f(ds["x_test"]), i(ds["y_test"])


def _mnist1d(seed: int):
    # The data set is fixed (seed 42, as published); the seed varies the model init and order.
    return mnist1d(5000, 42)


# ------------------------------------------------------------------------------ models
def _mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        return nn.Sequential(*layers)

    return make


def _digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


def _mnist1d_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, 25, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(125, 10),
    )


_ce = nn.functional.cross_entropy

register_problem(Problem(
    "digits-logreg", "multinomial logistic regression on scikit-learn's 8x8 digits (64 -> 10)",
    _mlp([64, 10]), _sklearn("load_digits"), _ce, batch_size=64, steps=300, metric=accuracy,
    tags=("convex", "sklearn"),
))
register_problem(Problem(
    "digits-mlp", "MLP 64-64-10 (ReLU) on scikit-learn's 8x8 digits",
    _mlp([64, 64, 10]), _sklearn("load_digits"), _ce, batch_size=64, steps=500, metric=accuracy,
    tags=("sklearn",),
))
register_problem(Problem(
    "digits-cnn", "small CNN (conv16-pool-conv32-pool-fc) on scikit-learn's 8x8 digits",
    _digits_cnn, _digits_images, _ce, batch_size=64, steps=500, metric=accuracy, tags=("sklearn", "cnn"),
))
register_problem(Problem(
    "breast-cancer-logreg", "logistic regression on scikit-learn's breast cancer data (30 -> 2)",
    _mlp([30, 2]), _sklearn("load_breast_cancer"), _ce, batch_size=32, steps=300, metric=accuracy,
    tags=("convex", "sklearn"),
))
register_problem(Problem(
    "mnist1d-mlp", "MLP 40-100-100-10 on MNIST-1D (generated locally, 4000 train / 1000 test)",
    _mlp([40, 100, 100, 10]), _mnist1d, _ce, batch_size=100, steps=1000, metric=accuracy,
    tags=("mnist1d",),
))
register_problem(Problem(
    "mnist1d-cnn", "1-d CNN (3 conv layers, 25 channels) on MNIST-1D (generated locally)",
    _mnist1d_cnn, _mnist1d, _ce, batch_size=100, steps=1000, metric=accuracy, tags=("mnist1d", "cnn"),
))


def describe() -> dict[str, Any]:
    """Name -> description of every registered problem."""
    return {n: p.description for n, p in sorted(_PROBLEMS.items())}
