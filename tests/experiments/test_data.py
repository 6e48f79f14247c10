"""Fashion-MNIST (IDX) and CIFAR-10 (python batches) loaders on small generated files of the
real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from steepest.experiments import data as D


def write_idx(path, arr: np.ndarray, code: int = 0x08, gz: bool = False) -> None:
    """IDX as specified by LeCun: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += np.asarray(arr).astype(dtype).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as fh:
        fh.write(raw)


def make_fashion(folder, n_train=12, n_test=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, arr in arrays.items():
        name = D.FASHION_FILES[key] + (".gz" if gz else "")
        write_idx(folder / name, arr, gz=gz)
    return arrays


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_every_type(tmp_path, code):
    rng = np.random.default_rng(1)
    arr = rng.integers(-100, 100, (3, 4, 2)).astype(np.float64)
    if code == 0x08:
        arr = np.abs(arr)
    write_idx(tmp_path / "x.idx", arr, code=code)
    out = D.read_idx(tmp_path / "x.idx")
    assert out.shape == (3, 4, 2)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.isnative


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sub", ["", "fashion-mnist", "FashionMNIST/raw"])
def test_load_fashion_mnist(tmp_path, gz, sub):
    arrays = make_fashion(tmp_path / sub if sub else tmp_path, gz=gz)
    xtr, ytr, xte, yte = D.load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(xtr, arrays["train_images"])
    np.testing.assert_array_equal(ytr, arrays["train_labels"])
    np.testing.assert_array_equal(xte, arrays["test_images"])
    np.testing.assert_array_equal(yte, arrays["test_labels"])
    assert ytr.dtype == np.int64


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(tmp_path / "bad")
    (tmp_path / "code").write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="type code"):
        D.read_idx(tmp_path / "code")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(ValueError, match="declares shape"):
        D.read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        D.load_fashion_mnist(tmp_path)


def test_fashion_label_count_mismatch(tmp_path):
    make_fashion(tmp_path)
    write_idx(tmp_path / D.FASHION_FILES["train_labels"], np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="do not match"):
        D.load_fashion_mnist(tmp_path)


def make_cifar(folder, per_batch=4, seed=0):
    """Batches as the official python version: pickled dicts with bytes keys, uint8 (N, 3072)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in (*D.CIFAR_TRAIN, D.CIFAR_TEST):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = batch
    return batches


def _check_cifar(batches, out):
    xtr, ytr, xte, yte = out
    assert xtr.shape == (20, 3, 32, 32) and xte.shape == (4, 3, 32, 32)
    want = np.concatenate([batches[n][b"data"] for n in D.CIFAR_TRAIN]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(xtr, want)
    labels = [v for n in D.CIFAR_TRAIN for v in batches[n][b"labels"]]
    np.testing.assert_array_equal(ytr, labels)
    np.testing.assert_array_equal(yte, batches[D.CIFAR_TEST][b"labels"])
    # channel-major layout of the python version: the first 1024 bytes are the red plane
    np.testing.assert_array_equal(xte[0, 0].ravel(), batches[D.CIFAR_TEST][b"data"][0, :1024])


def test_load_cifar10_folder(tmp_path):
    batches = make_cifar(tmp_path / "cifar-10-batches-py")
    _check_cifar(batches, D.load_cifar10(tmp_path))


def test_load_cifar10_tarball(tmp_path):
    batches = make_cifar(tmp_path / "src" / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check_cifar(batches, D.load_cifar10(tmp_path))


def test_cifar_refuses_code_in_pickles(tmp_path):
    make_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        D.load_cifar10(tmp_path)


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        D.load_cifar10(tmp_path)
    make_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
    with pytest.raises(ValueError, match="needs 'data' and 'labels'"):
        D.load_cifar10(tmp_path)
    bad = {b"labels": [1, 2], b"data": np.zeros((2, 100), dtype=np.uint8)}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match="3072"):
        D.load_cifar10(tmp_path)


def test_image_tensors_standardized(tmp_path):
    make_fashion(tmp_path, n_train=30, n_test=6)
    make_cifar(tmp_path / "cifar-10-batches-py")
    x, _, xt, _ = D.image_tensors("fashion-mnist", tmp_path)
    assert x.shape == (30, 1, 28, 28) and xt.shape == (6, 1, 28, 28)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-2
    x, y, _, _ = D.image_tensors("cifar10", tmp_path)
    assert x.shape == (20, 3, 32, 32) and y.dtype.is_floating_point is False
    per_channel = x.mean(dim=(0, 2, 3))
    assert float(per_channel.abs().max()) < 1e-5
    with pytest.raises(ValueError, match="kind"):
        D.image_tensors("imagenet", tmp_path)


def test_gz_and_buffer_equivalence(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    write_idx(tmp_path / "a.gz", arr, gz=True)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "a"), D.read_idx(tmp_path / "a.gz"))


def test_data_dir_without_the_data_is_an_error(tmp_path, capsys):
    # A --data-dir that holds none of the paper's data sets must not silently drop those set-ups.
    from steepest.cli import main

    assert D.found_in_data_dir(None, ("cifar10",)) == []
    with pytest.raises(FileNotFoundError, match=r"none of \['fashion-mnist', 'cifar10'\] found"):
        D.found_in_data_dir(tmp_path, ("fashion-mnist", "cifar10"))
    assert main(["reproduce", "adam-ablation", "--quick", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2
    assert "none of ['fashion-mnist', 'cifar10'] found" in capsys.readouterr().err
