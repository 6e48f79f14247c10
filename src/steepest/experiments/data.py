"""Loaders for the standard image data sets of [BPL20, Adam experiment (App. D.1)], read from
files the user already has (nothing is downloaded):

* **Fashion-MNIST** in the IDX format of the original distribution:
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``);
* **CIFAR-10** in the "python version" format: the folder ``cifar-10-batches-py`` with the
  pickled batches ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``, or the archive
  ``cifar-10-python.tar.gz`` itself.

``--data-dir`` may point at the folder holding the files or at a parent: the usual sub-folders
(``fashion-mnist``, ``FashionMNIST/raw``, ``cifar-10-batches-py``, ...) are searched.

The CIFAR batches are pickles; they are read with a restricted unpickler that only rebuilds
numpy arrays, lists, dicts, strings and numbers, so a tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "find_cifar10",
    "find_fashion_mnist",
    "found_in_data_dir",
    "image_tensors",
    "load_cifar10",
    "load_fashion_mnist",
    "read_idx",
    "standardize_images",
    "train_subset",
]

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); data is big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FASHION_SUBDIRS = ("", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST",
                    "fashion", "data/fashion")
_CIFAR_SUBDIRS = ("", "cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10",
                  "CIFAR10/cifar-10-batches-py")
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally ``.gz``) into a numpy array of its declared type and shape.

    Raises ``ValueError`` for a bad magic number, an unknown type code, or a size that does not
    match the header.
    """
    path = Path(path)
    with _open(path) as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic number must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_file(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def find_fashion_mnist(data_dir: str | Path) -> dict[str, Path]:
    """The four Fashion-MNIST IDX files under ``data_dir`` (or a usual sub-folder)."""
    root = Path(data_dir).expanduser()
    for sub in _FASHION_SUBDIRS:
        folder = root / sub if sub else root
        found = {k: _find_file(folder, v) for k, v in FASHION_FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    raise FileNotFoundError(
        f"Fashion-MNIST not found under {root}: expected the IDX files "
        f"{sorted(FASHION_FILES.values())} (optionally .gz) in it or in one of "
        f"{[s for s in _FASHION_SUBDIRS if s]}"
    )


def load_fashion_mnist(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: uint8 images ``(N, 28, 28)``, int64 labels."""
    files = find_fashion_mnist(data_dir)
    out = []
    for split in ("train", "test"):
        x = read_idx(files[f"{split}_images"])
        y = read_idx(files[f"{split}_labels"]).astype(np.int64)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"Fashion-MNIST {split}: images {x.shape} and labels {y.shape} do not match"
            )
        out += [x, y]
    return out[0], out[1], out[2], out[3]


# ------------------------------------------------------------------------------ CIFAR-10
class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds only what CIFAR batches contain: numpy arrays (and their dtypes)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            if module.startswith("numpy.core") and hasattr(np, "_core"):
                module = "numpy._core" + module[len("numpy.core") :]  # numpy 2 renamed it
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR batch: refusing to load {module}.{name}")


def _unpickle(data: bytes, where: str) -> dict[bytes, Any]:
    obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a CIFAR batch must be a dict, got {type(obj).__name__}")
    return obj


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    get = lambda k: batch.get(k.encode(), batch.get(k))  # noqa: E731 (py2 bytes / py3 str keys)
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise ValueError(f"{where}: a CIFAR batch needs 'data' and 'labels'")
    x = np.asarray(data, dtype=np.uint8)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise ValueError(f"{where}: data must be (N, 3072) uint8 with N labels, got {x.shape}")
    return x.reshape(-1, 3, 32, 32), y


def find_cifar10(data_dir: str | Path) -> Path:
    """The ``cifar-10-batches-py`` folder (or ``cifar-10-python.tar.gz``) under ``data_dir``."""
    root = Path(data_dir).expanduser()
    for sub in _CIFAR_SUBDIRS:
        folder = root / sub if sub else root
        if all((folder / n).is_file() for n in (*CIFAR_TRAIN, CIFAR_TEST)):
            return folder
    for tar in (root / "cifar-10-python.tar.gz", root / "cifar10" / "cifar-10-python.tar.gz"):
        if tar.is_file():
            return tar
    raise FileNotFoundError(
        f"CIFAR-10 not found under {root}: expected cifar-10-batches-py/ with "
        f"{[*CIFAR_TRAIN, CIFAR_TEST]} or cifar-10-python.tar.gz"
    )


def load_cifar10(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: uint8 images ``(N, 3, 32, 32)``, int64 labels."""
    src = find_cifar10(data_dir)
    blobs: dict[str, bytes] = {}
    if src.is_dir():
        for name in (*CIFAR_TRAIN, CIFAR_TEST):
            blobs[name] = (src / name).read_bytes()
    else:
        with tarfile.open(src, "r:gz") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in (*CIFAR_TRAIN, CIFAR_TEST):
                    fh = tar.extractfile(member)
                    if fh is not None:
                        blobs[base] = fh.read()
        missing = [n for n in (*CIFAR_TRAIN, CIFAR_TEST) if n not in blobs]
        if missing:
            raise FileNotFoundError(f"{src}: the archive lacks {missing}")
    parts = [_batch_arrays(_unpickle(blobs[n], n), n) for n in CIFAR_TRAIN]
    x_te, y_te = _batch_arrays(_unpickle(blobs[CIFAR_TEST], CIFAR_TEST), CIFAR_TEST)
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return x_tr, y_tr, x_te, y_te


def standardize_images(
    x_train: np.ndarray, x_test: np.ndarray
) -> tuple[Tensor, Tensor]:
    """uint8 images -> float32 tensors ``(N, C, H, W)``, scaled to [0, 1] and standardized per
    channel with the training set's mean and standard deviation."""
    def as_nchw(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32) / 255.0
        return x[:, None] if x.ndim == 3 else x

    tr, te = as_nchw(x_train), as_nchw(x_test)
    mean = tr.mean(axis=(0, 2, 3), keepdims=True)
    std = tr.std(axis=(0, 2, 3), keepdims=True)
    std[std == 0] = 1.0
    return torch.from_numpy((tr - mean) / std), torch.from_numpy((te - mean) / std)


def image_tensors(kind: str, data_dir: str | Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` as standardized float32 ``(N, C, H, W)`` tensors and
    int64 labels, for ``kind`` ``"fashion-mnist"`` or ``"cifar10"``."""
    if kind == "fashion-mnist":
        xtr, ytr, xte, yte = load_fashion_mnist(data_dir)
    elif kind == "cifar10":
        xtr, ytr, xte, yte = load_cifar10(data_dir)
    else:
        raise ValueError(f"kind must be 'fashion-mnist' or 'cifar10', got {kind!r}")
    ftr, fte = standardize_images(xtr, xte)
    return ftr, torch.from_numpy(ytr), fte, torch.from_numpy(yte)


def found_in_data_dir(data_dir: str | Path | None, wanted: tuple[str, ...]) -> list[str]:
    """Which of the user-provided data sets ``wanted`` (``"fashion-mnist"``, ``"cifar10"``) are
    under ``data_dir``. ``None`` (no ``--data-dir``) finds none. A ``data_dir`` that holds none of
    them is an error that says what was looked for, so a typo cannot silently drop the paper's
    set-ups from a run."""
    if data_dir is None:
        return []
    finders = {"fashion-mnist": find_fashion_mnist, "cifar10": find_cifar10}
    found, why = [], []
    for name in wanted:
        try:
            finders[name](data_dir)
            found.append(name)
        except FileNotFoundError as e:
            why.append(str(e))
    if not found:
        raise FileNotFoundError(f"--data-dir {data_dir}: none of {list(wanted)} found; " + "; ".join(why))
    return found


def train_subset(x: Tensor, y: Tensor, subset: int) -> tuple[Tensor, Tensor]:
    """The first ``subset`` examples of a fixed random order (seed 0), or all of them when
    ``subset`` is 0 or not smaller: the same subset in every run and experiment."""
    if subset and subset < len(x):
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:subset]
        return x[keep], y[keep]
    return x, y


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a classifier over ``(x, y)``, in chunks of ``chunk``
    examples (the training mode is restored after)."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        out = model(x[i : i + chunk])
        loss += float(nn.functional.cross_entropy(out, y[i : i + chunk], reduction="sum"))
        correct += int((out.argmax(-1) == y[i : i + chunk]).sum())
    model.train()
    return loss / len(x), correct / len(x)
