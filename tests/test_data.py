"""Tests for xbar.data: tiny IDX and CIFAR files written here, compared against numpy formulas."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from xbar import data
from xbar.errors import ConfigError, DataError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Keep the user's $XBAR_DATA, ~/.cache/xbar and Debian folder out of every test."""
    monkeypatch.delenv("XBAR_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(data, "_DEBIAN_FMNIST", tmp_path / "debian-fmnist")


def idx_bytes(arr: np.ndarray, code: int = 0x08, dtype: str = ">u1") -> bytes:
    """Reference IDX encoder: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + np.asarray(arr, dtype=dtype).tobytes()


def write_idx(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(arr, **kw)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def make_mnist(folder: Path, split: str = "test", n: int = 5, seed: int = 0, gz: bool = True):
    """Write a tiny MNIST-format split into `folder`; returns the raw uint8 images and labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # make sure both ends of the range appear
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


def make_cifar(folder: Path, n: int = 2, seed: int = 0):
    """Write tiny CIFAR-10 python batches into `folder`; returns {batch name: (data, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(folder / b, "wb") as fh:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": b.encode()}, fh)
        out[b] = (x, y)
    return out


def mnist_formula(images: np.ndarray) -> np.ndarray:
    """torchvision's ToTensor + Normalize((0.1307,), (0.3081,)), step by step in float32."""
    x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
    return (x - np.float32(0.1307)) / np.float32(0.3081)


# ----------------------------------------------------------------------------- IDX reader

@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_read_idx_roundtrip(tmp_path, name):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = data.read_idx(write_idx(tmp_path / name, arr))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_other_dtype_is_native_endian(tmp_path):
    arr = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    out = data.read_idx(write_idx(tmp_path / "i32", arr, code=0x0C, dtype=">i4"))
    assert out.dtype == np.dtype("int32") and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("raw", [
    b"",                                                    # empty
    b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc",    # bad magic
    b"\x00\x00\x07\x01" + struct.pack(">I", 3) + b"abc",    # unknown type code
    b"\x00\x00\x08\x02" + struct.pack(">I", 3),             # header truncated
    b"\x00\x00\x08\x01" + struct.pack(">I", 4) + b"abc",    # data truncated
    b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"abc",    # trailing bytes
])
def test_read_idx_corrupt_raises_data_error_naming_file(tmp_path, raw):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DataError, match="broken-idx1-ubyte"):
        data.read_idx(path)


def test_read_idx_bad_gzip(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="bad.gz"):
        data.read_idx(path)


# ----------------------------------------------------------------------------- MNIST family

def test_mnist_shapes_dtypes_and_exact_normalisation(tmp_path):
    images, labels = make_mnist(tmp_path)
    X, y = data.load("mnist", "test", tmp_path)
    assert X.shape == (5, 784) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (5,) and y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(X, mnist_formula(images))  # bit-for-bit
    ref64 = (images.reshape(5, -1) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(X, ref64, rtol=0, atol=2e-6)
    assert X[0, 0] == pytest.approx(-0.1307 / 0.3081, abs=1e-6)


def test_fmnist_default_is_unit_range_and_none_is_pixels_over_255(tmp_path):
    images, _ = make_mnist(tmp_path / "fmnist", split="train")
    X, _ = data.load("fmnist", "train", tmp_path)
    expect = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(X, expect)
    assert X.min() == 0.0 and X.max() == 1.0
    Xn, _ = data.load("mnist", "train", tmp_path / "fmnist", preprocess="none")
    np.testing.assert_array_equal(Xn, expect)


@pytest.mark.parametrize("name, sub", [
    ("mnist", ""), ("mnist", "mnist"), ("mnist", "MNIST/raw"),
    ("fmnist", ""), ("fmnist", "fmnist"), ("fmnist", "FashionMNIST/raw"),
])
@pytest.mark.parametrize("gz", [True, False])
def test_directory_layouts(tmp_path, name, sub, gz):
    images, labels = make_mnist(tmp_path / sub, gz=gz)
    X, y = data.load(name, "test", data_dir=str(tmp_path))
    assert X.shape == (5, 784)
    np.testing.assert_array_equal(y, labels)
    if name == "fmnist":
        np.testing.assert_array_equal(X, images.reshape(5, -1).astype(np.float32) / np.float32(255))
    else:
        np.testing.assert_array_equal(X, mnist_formula(images))


def test_xbar_data_env_and_home_cache(tmp_path, monkeypatch):
    _, labels_home = make_mnist(tmp_path / "home" / ".cache" / "xbar" / "mnist", n=3, seed=1)
    np.testing.assert_array_equal(data.load("mnist", "test")[1], labels_home)
    _, labels_env = make_mnist(tmp_path / "env", n=4, seed=2)
    monkeypatch.setenv("XBAR_DATA", str(tmp_path / "env"))
    np.testing.assert_array_equal(data.load("mnist", "test")[1], labels_env)
    _, labels_arg = make_mnist(tmp_path / "arg", n=6, seed=3)
    np.testing.assert_array_equal(data.load("mnist", "test", tmp_path / "arg")[1], labels_arg)


def test_named_subfolder_wins_over_flat_files(tmp_path):
    make_mnist(tmp_path, n=3, seed=1)                      # flat: MNIST
    _, labels = make_mnist(tmp_path / "fmnist", n=4, seed=2)
    assert len(data.load("fmnist", "test", tmp_path)[1]) == 4
    np.testing.assert_array_equal(data.load("fmnist", "test", tmp_path)[1], labels)


def test_debian_fashion_mnist_folder_is_searched(tmp_path):
    _, labels = make_mnist(tmp_path / "debian-fmnist")
    np.testing.assert_array_equal(data.load("fmnist", "test")[1], labels)


def test_missing_files_message_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("XBAR_DATA", str(tmp_path / "env"))
    make_mnist(tmp_path / "arg", split="train")  # the other split does not count
    with pytest.raises(DataError) as info:
        data.load("mnist", "test", tmp_path / "arg")
    msg = str(info.value)
    for root in (tmp_path / "arg", tmp_path / "env", tmp_path / "home" / ".cache" / "xbar"):
        for place in (root, root / "mnist", root / "MNIST" / "raw"):
            assert f"  {place}\n" in msg
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "xbar data fetch mnist" in msg and "--data-dir" in msg and "XBAR_DATA" in msg
    assert "apt-get" not in msg


def test_missing_fmnist_mentions_debian_package(tmp_path):
    with pytest.raises(DataError) as info:
        data.load("fmnist", "train")
    msg = str(info.value)
    assert str(tmp_path / "debian-fmnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "xbar data fetch fmnist" in msg
    assert "$XBAR_DATA is not set" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_images_and_labels_disagree(tmp_path):
    make_mnist(tmp_path, n=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="disagree"):
        data.load("mnist", "test", tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("sub", ["cifar-10-batches-py", "cifar10/cifar-10-batches-py"])
def test_cifar10_layouts_shapes_and_normalisation(tmp_path, sub):
    batches = make_cifar(tmp_path / sub)
    X, y = data.load("cifar10", "train", tmp_path)
    assert X.shape == (10, 3072) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.dtype == np.int64
    raw = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(y, np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)]))
    mean = np.array([0.4914, 0.4822, 0.4465], np.float32)
    std = np.array([0.2470, 0.2435, 0.2616], np.float32)
    x = raw.astype(np.float32) / np.float32(255)
    expect = np.concatenate([(x[:, c * 1024:(c + 1) * 1024] - mean[c]) / std[c] for c in range(3)], axis=1)
    np.testing.assert_array_equal(X, expect)

    Xt, yt = data.load("cifar10", "test", tmp_path, preprocess="none")
    assert Xt.shape == (2, 3072)
    np.testing.assert_array_equal(Xt, batches["test_batch"][0].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(yt, batches["test_batch"][1])


def test_cifar10_corrupt_batch(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="test_batch"):
        data.load("cifar10", "test", tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataError, match="3072"):
        data.load("cifar10", "test", tmp_path)


def test_cifar10_missing(tmp_path):
    with pytest.raises(DataError) as info:
        data.load("cifar10", "test", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in msg and "xbar data fetch cifar10" in msg


# ----------------------------------------------------------------------------- digits

def test_digits_split_deterministic_disjoint_and_complete():
    from sklearn.datasets import load_digits

    Xtr, ytr = data.load("digits", "train")
    Xte, yte = data.load("digits", "test")
    assert Xtr.shape == (1437, 64) and Xte.shape == (360, 64)
    assert Xtr.dtype == np.float32 and ytr.dtype == np.int64 and Xtr.flags.c_contiguous
    assert 0.0 <= Xtr.min() and Xtr.max() == 1.0
    Xtr2, ytr2 = data.load("digits", "train", preprocess="none")
    np.testing.assert_array_equal(Xtr, Xtr2)
    np.testing.assert_array_equal(ytr, ytr2)
    # Train and test together are exactly sklearn's digits (as multisets of rows), so the split
    # is a partition: disjoint and complete.
    full = load_digits()
    ours = np.column_stack([np.vstack([Xtr, Xte]) * 16, np.concatenate([ytr, yte])])
    theirs = np.column_stack([full.data, full.target])
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], theirs[np.lexsort(theirs.T)])


def test_metadata():
    assert data.DATASETS == ("fmnist", "mnist", "cifar10", "digits")
    assert data.image_shape("mnist") == data.image_shape("fmnist") == (1, 28, 28)
    assert data.image_shape("cifar10") == (3, 32, 32) and data.image_shape("digits") == (1, 8, 8)
    assert all(data.num_classes(n) == 10 for n in data.DATASETS)


# ----------------------------------------------------------------------------- argument checks

@pytest.mark.parametrize("call, words", [
    (lambda: data.load("mnsit", "train"), ["'mnsit'", "did you mean 'mnist'", "fmnist, mnist, cifar10, digits"]),
    (lambda: data.load("mnist", "val"), ["'val'", "train, test"]),
    (lambda: data.load("digits", "train", preprocess="standard"), ["'standard'", "default, none"]),
    (lambda: data.image_shape("imagenet"), ["'imagenet'", "cifar10"]),
    (lambda: data.num_classes(3), ["3", "digits"]),
    (lambda: data.fetch("svhn"), ["'svhn'", "fmnist, mnist"]),
])
def test_bad_arguments_raise_config_error_with_valid_list(call, words):
    with pytest.raises(ConfigError) as info:
        call()
    for w in words:
        assert w in str(info.value)


# ----------------------------------------------------------------------------- fetch

def serve(monkeypatch, name: str, folder: Path, files: dict[str, bytes], md5s: dict[str, str] | None = None):
    """Point fetch at file:// copies of `files`; md5s default to the true sums."""
    folder.mkdir(parents=True, exist_ok=True)
    for fname, raw in files.items():
        (folder / fname).write_bytes(raw)
    sums = md5s or {f: hashlib.md5(raw).hexdigest() for f, raw in files.items()}
    monkeypatch.setitem(data._SOURCES, name, (folder.as_uri() + "/", sums))


def test_fetch_offline_raises_clear_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        data.fetch("fmnist", tmp_path, progress=False)
    msg = str(info.value)
    assert "could not download http" in msg and "name resolution" in msg and "--data-dir" in msg
    assert not list((tmp_path / "fmnist").glob("*.part"))


def test_fetch_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    serve(monkeypatch, "mnist", tmp_path / "srv", {"t10k-labels-idx1-ubyte.gz": b"hello"},
          md5s={"t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(DataError, match="checksum mismatch") as info:
        data.fetch("mnist", tmp_path / "dest", progress=False)
    assert hashlib.md5(b"hello").hexdigest() in str(info.value)
    assert not any((tmp_path / "dest" / "mnist").iterdir())


def test_fetch_then_load_roundtrip(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    images, labels = make_mnist(src)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    serve(monkeypatch, "mnist", tmp_path / "srv", files)
    monkeypatch.setenv("XBAR_DATA", str(tmp_path / "cache"))
    assert data.fetch("mnist") == tmp_path / "cache" / "mnist"
    assert "fetching file://" in capsys.readouterr().err
    X, y = data.load("mnist", "test")
    np.testing.assert_array_equal(X, mnist_formula(images))
    np.testing.assert_array_equal(y, labels)

    # A second fetch finds verified files and touches no network.
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded again"))
    data.fetch("mnist", progress=False)


def test_fetch_cifar10_extracts_tarball(tmp_path, monkeypatch):
    batches = make_cifar(tmp_path / "src" / "cifar-10-batches-py")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    serve(monkeypatch, "cifar10", tmp_path / "srv", {"cifar-10-python.tar.gz": buf.getvalue()})
    folder = data.fetch("cifar10", tmp_path / "dest", progress=False)
    assert not (folder / "cifar-10-python.tar.gz").exists()
    _, y = data.load("cifar10", "test", tmp_path / "dest")
    np.testing.assert_array_equal(y, batches["test_batch"][1])


def test_fetch_digits_needs_nothing(tmp_path, capsys):
    assert data.fetch("digits", tmp_path) is None
    assert "nothing to fetch" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- real data

@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_test_split(monkeypatch):
    monkeypatch.setattr(data, "_DEBIAN_FMNIST", REAL_FMNIST)
    X, y = data.load("fmnist", "test")
    assert X.shape == (10000, 784) and y.shape == (10000,)
    assert X.min() >= 0.0 and X.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))
