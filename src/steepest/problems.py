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
        # only floating-point tensors take dtype: token indices (char-LSTM/transformer) stay ints
        cast = (lambda t: t.to(dtype) if t.is_floating_point() else t) if dtype != torch.float32 \
            else (lambda t: t)
        return ProblemInstance(
            model=model,
            train=TensorDataset(cast(xtr), cast(ytr)),
            test=TensorDataset(cast(xte), cast(yte)),
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


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
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


# ------------------------------------------------------------------------------ [BPL20, App. D.1]
# The CNNs of "The Geometry of Sign Gradient Descent" [BPL20, App. D.1], used by
# ``steepest reproduce adam-ablation``. Pooling is max-pooling over 3 (x 3) with stride 2
# ("same" padding, so each pool halves the size, rounding up).
def cnn_2c2d(in_shape: tuple[int, ...] = (1, 28, 28), classes: int = 10, *,
             channels: tuple[int, int] = (32, 64), hidden: int = 1024) -> nn.Module:
    """[BPL20]'s Fashion-MNIST CNN: conv 5x5 (32) - pool - conv 5x5 (64) - pool - fc 1024 -
    fc ``classes``, ReLU, "same" convolutions. ``in_shape`` is ``(C, H, W)`` (2-d convolutions)
    or ``(C, L)`` (the same network with 1-d convolutions, for MNIST-1D). ``channels`` and
    ``hidden`` narrow it (the CPU-sized counterparts of [Bal21]'s experiments)."""
    if len(in_shape) not in (2, 3):
        raise ValueError(f"in_shape must be (C, L) or (C, H, W), got {in_shape!r}")
    conv, pool = (nn.Conv1d, nn.MaxPool1d) if len(in_shape) == 2 else (nn.Conv2d, nn.MaxPool2d)
    c1, c2 = channels
    features = nn.Sequential(
        conv(in_shape[0], c1, 5, padding=2), nn.ReLU(), pool(3, stride=2, padding=1),
        conv(c1, c2, 5, padding=2), nn.ReLU(), pool(3, stride=2, padding=1), nn.Flatten(),
    )
    return _with_head(features, in_shape, [hidden], classes)


def cnn_3c3d(in_shape: tuple[int, int, int] = (3, 32, 32), classes: int = 10, *,
             channels: tuple[int, int, int] = (64, 96, 128),
             hidden: tuple[int, int] = (512, 256)) -> nn.Module:
    """[BPL20]'s CIFAR-10 CNN (DeepOBS ``cifar10_3c3d``): conv 5x5 (64, valid) - pool - conv 3x3
    (96, valid) - pool - conv 3x3 (128, same) - pool - fc 512 - fc 256 - fc ``classes``, ReLU.
    The paper adds an l2 penalty 0.002 (on the weights); the training loop applies it.
    ``channels`` and ``hidden`` narrow it (CPU-sized counterparts)."""
    c1, c2, c3 = channels
    features = nn.Sequential(
        nn.Conv2d(in_shape[0], c1, 5), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(),
    )
    return _with_head(features, in_shape, list(hidden), classes)


def _with_head(features: nn.Module, in_shape: tuple[int, ...], hidden: list[int], classes: int
               ) -> nn.Module:
    with torch.no_grad():
        n = features(torch.zeros(1, *in_shape)).shape[1]
    layers: list[nn.Module] = [features]
    for a, b in zip([n, *hidden], hidden):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(([n, *hidden])[-1], classes))
    return nn.Sequential(*layers)


def _mnist1d_channels(seed: int):
    xtr, ytr, xte, yte = _mnist1d(seed)
    return xtr[:, None, :], ytr, xte[:, None, :], yte


def _data_dir_loader(kind: str) -> Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Standard files from ``$STEEPEST_DATA_DIR`` (``steepest reproduce --data-dir`` passes its
    own folder instead); nothing is downloaded."""

    def load(seed: int):
        import os

        from steepest.experiments.data import image_tensors

        d = os.environ.get("STEEPEST_DATA_DIR")
        if not d:
            raise FileNotFoundError(
                f"{kind} needs its standard files: set STEEPEST_DATA_DIR (or pass --data-dir)"
            )
        return image_tensors(kind, d)

    return load


register_problem(Problem(
    "digits-2c2d", "[BPL20]'s Fashion-MNIST CNN (2 conv + 2 fc) on scikit-learn's 8x8 digits",
    lambda: cnn_2c2d((1, 8, 8)), _digits_images, _ce, batch_size=64, steps=630,
    metric=accuracy, tags=("sklearn", "cnn", "seed000"),
))
register_problem(Problem(
    "mnist1d-2c2d", "[BPL20]'s Fashion-MNIST CNN with 1-d convolutions on MNIST-1D",
    lambda: cnn_2c2d((1, 40)), _mnist1d_channels, _ce, batch_size=64, steps=940,
    metric=accuracy, tags=("mnist1d", "cnn", "seed000"),
))
register_problem(Problem(
    "fashion-mnist-2c2d", "[BPL20]'s Fashion-MNIST CNN (needs the IDX files, $STEEPEST_DATA_DIR)",
    lambda: cnn_2c2d((1, 28, 28)), _data_dir_loader("fashion-mnist"), _ce, batch_size=64,
    steps=6 * 938, metric=accuracy, tags=("cnn", "seed000", "data-dir"),
))
register_problem(Problem(
    "cifar10-3c3d", "[BPL20]'s CIFAR-10 CNN (needs the python batches, $STEEPEST_DATA_DIR)",
    lambda: cnn_3c3d((3, 32, 32)), _data_dir_loader("cifar10"), _ce, batch_size=128,
    steps=10 * 391, metric=accuracy, tags=("cnn", "seed000", "data-dir"),
))


# ------------------------------------------------------------------------------ character-level text
# A tiny causal transformer on Python source text shipped with Python itself (stdlib modules
# textwrap, shlex, string: ~45k characters, nothing downloaded). The text changes a little
# between Python versions, so numbers are comparable within one Python version.
_TEXT_MODULES = ("textwrap", "shlex", "string")
CHAR_VOCAB = 96  # '\n' -> 0, printable ASCII 32..126 -> 1..95, anything else -> 0 as well


def python_source_text() -> str:
    """The concatenated source of a few stdlib modules (the corpus of ``pysrc-char-transformer``)."""
    import importlib
    import pathlib

    return "\n".join(
        pathlib.Path(importlib.import_module(m).__file__).read_text(encoding="utf-8")  # type: ignore[arg-type]
        for m in _TEXT_MODULES
    )


def _char_windows(seed: int, context: int = 32):
    # Non-overlapping windows of context + 1 characters; inputs are the first `context`, targets
    # the next character at each position. The last 10% of the text is the test split (fixed:
    # the seed varies only the model init and batch order).
    codes = [(ord(c) - 31) if 32 <= ord(c) <= 126 else 0 for c in python_source_text()]
    data = torch.tensor(codes, dtype=torch.int64)
    n = (len(data) - 1) // context
    x = data[: n * context].reshape(n, context)
    y = data[1 : n * context + 1].reshape(n, context)
    n_test = n // 10
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]


class CharTransformer(nn.Module):
    """A one-block causal transformer (pre-LayerNorm, learned positions) for next-character
    prediction: ``(N, T)`` integer codes -> ``(N, T, vocab)`` logits."""

    def __init__(self, vocab: int = CHAR_VOCAB, d_model: int = 32, heads: int = 2,
                 context: int = 32, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(context, d_model))
        nn.init.normal_(self.pos, std=0.02)
        block = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device)
        h = self.blocks(self.embed(x) + self.pos[:t], mask=mask, is_causal=True)
        return self.head(self.norm(h))


def _seq_ce(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


register_problem(Problem(
    "pysrc-char-transformer",
    "1-block causal transformer (d 32, 2 heads, context 32) predicting the next character of "
    "Python stdlib source (textwrap, shlex, string; ships with Python)",
    CharTransformer, _char_windows, _seq_ce, batch_size=32, steps=400, metric=accuracy,
    tags=("text", "transformer"),
))


# ------------------------------------------------------------------------------ [Bal21], CPU-sized
# CPU-sized counterparts of the problems of [Bal21]'s experiments (Sec. 4.4.4, Sec. 5.6), used by
# ``steepest reproduce dissecting-adam`` and ``steepest reproduce cabs``: the paper's 2c2d / 3c3d
# architectures narrowed (same layer structure, fewer filters and units), and a two-layer
# character-level LSTM ([Bal21, App. B.1], P4) on English text that ships with Python.
SMALL_2C2D: dict[str, Any] = {"channels": (8, 16), "hidden": 64}
SMALL_3C3D: dict[str, Any] = {"channels": (16, 24, 32), "hidden": (128, 64)}

register_problem(Problem(
    "digits-2c2d-small", "[BPL20]/[Bal21]'s 2c2d CNN narrowed to conv 8-16, fc 64, on the 8x8 digits",
    lambda: cnn_2c2d((1, 8, 8), **SMALL_2C2D), _digits_images, _ce, batch_size=64, steps=400,
    metric=accuracy, tags=("sklearn", "cnn", "seed001"),
))
register_problem(Problem(
    "mnist1d-2c2d-small", "[BPL20]/[Bal21]'s 2c2d CNN (1-d) narrowed to conv 8-16, fc 64, on MNIST-1D",
    lambda: cnn_2c2d((1, 40), **SMALL_2C2D), _mnist1d_channels, _ce, batch_size=64, steps=600,
    metric=accuracy, tags=("mnist1d", "cnn", "seed001"),
))
register_problem(Problem(
    "cifar10-3c3d-small", "[Bal21]'s 3c3d CNN narrowed to conv 16-24-32, fc 128-64 (needs the "
    "CIFAR-10 python batches, $STEEPEST_DATA_DIR)",
    lambda: cnn_3c3d((3, 32, 32), **SMALL_3C3D), _data_dir_loader("cifar10"), _ce,
    batch_size=128, steps=1000, metric=accuracy, tags=("cnn", "seed001", "data-dir"),
))


def pydoc_text() -> str:
    """English prose that ships with Python: the help topics of the language reference
    (``pydoc_data.topics``, ~465k characters in Python 3.11), topics in sorted order. It stands in
    for [Bal21]'s *War and Peace* (App. B.1, P4). The text differs between Python versions."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def char_lstm_data(seq_len: int = 50, test_fraction: float = 0.1
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """``(x_train, y_train, x_test, y_test, vocab)`` for next-character prediction on
    :func:`pydoc_text`: non-overlapping windows of ``seq_len + 1`` characters (``x`` the first
    ``seq_len`` codes, ``y`` the next character at each position); the last ``test_fraction``
    of the text is the test split. ``vocab`` is the sorted character set of the whole text."""
    if not (isinstance(seq_len, int) and seq_len >= 1):
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    text = pydoc_text()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    codes = torch.tensor([index[c] for c in text], dtype=torch.int64)
    cut = int(len(codes) * (1.0 - test_fraction))

    def windows(a: Tensor) -> tuple[Tensor, Tensor]:
        n = (len(a) - 1) // seq_len
        return a[: n * seq_len].reshape(n, seq_len), a[1 : n * seq_len + 1].reshape(n, seq_len)

    xtr, ytr = windows(codes[:cut])
    xte, yte = windows(codes[cut:])
    return xtr, ytr, xte, yte, vocab


class CharLSTM(nn.Module):
    """Character-level language model of [Bal21, App. B.1] (P4): an embedding, a two-layer LSTM
    and a linear read-out; ``(N, T)`` codes -> ``(N, T, vocab)`` logits. The paper: 128 hidden
    units, 83 characters, sequence length 50, dropout; the CPU-sized default is 48 units, no
    dropout, every window starting from a zero state."""

    def __init__(self, vocab: int, hidden: int = 48, embed: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out)


def sequence_cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """Mean next-character cross-entropy over all ``N * T`` positions of ``(N, T, V)`` logits."""
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _char_lstm_vocab_size() -> int:
    return len(set(pydoc_text()))


register_problem(Problem(
    "pydoc-char-lstm", "2-layer character LSTM (48 units) on Python's pydoc help topics (English "
    "prose shipped with Python; [Bal21]'s P4 used War and Peace)",
    lambda: CharLSTM(_char_lstm_vocab_size()), lambda seed: char_lstm_data()[:4],
    sequence_cross_entropy, batch_size=32, steps=400, metric=accuracy, tags=("text", "lstm", "seed001"),
))
