"""Datasets as flat float32 arrays: MNIST, Fashion-MNIST, CIFAR-10 and sklearn's digits.

Everything is read from the standard distribution files (IDX for the MNIST family, the python
pickle batches for CIFAR-10, unpickled without running code) with numpy alone, so xbar needs
neither torch nor torchvision. Preprocessing defaults to the seed study's (the Granada bachelor's
thesis of 2022 behind experiments/seed-study.toml): MNIST is normalised with mean 0.1307 and std
0.3081, Fashion-MNIST only scaled to [0, 1].
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .config import suggest
from .errors import ConfigError, DataError

DATASETS = ("fmnist", "mnist", "cifar10", "digits")
SPLITS = ("train", "test")
PREPROCESS = ("default", "none")

_SHAPES = {"fmnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32), "digits": (1, 8, 8)}
_DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
_TORCHVISION_DIR = {"mnist": "MNIST", "fmnist": "FashionMNIST"}
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
# Channel statistics of the CIFAR-10 training set, the values used throughout the literature.
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_MNIST_MEAN, _MNIST_STD = 0.1307, 0.3081
_DIGITS_TEST = 360  # 20 % of sklearn's 1,797 digits

# Official download locations and the MD5 sums published alongside them.
_SOURCES = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    # The S3 website endpoint the Fashion-MNIST README names serves plain http only; the same
    # files (same MD5 sums) come over https from the dataset's repository.
    "fmnist": ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/", {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}),
}

# IDX type codes (third header byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _check_choice(what: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise ConfigError(f"{what} {value!r} is not known{hint}; valid: {', '.join(choices)}")


def image_shape(name: str) -> tuple[int, int, int]:
    """(channels, height, width) of one image of dataset `name`; X rows are this shape flattened."""
    _check_choice("dataset", name, DATASETS)
    return _SHAPES[name]


def num_classes(name: str) -> int:
    """Number of label classes of dataset `name` (10 for all four)."""
    _check_choice("dataset", name, DATASETS)
    return 10


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip-compressed when the name ends in .gz) into a native-endian array.

    path: the file. Raises DataError naming the file when the header or the size is wrong.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; a flipped bit
        raise DataError(f"{path}: cannot read IDX file (corrupt or truncated; fetch it again): "
                        f"{exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path}: corrupt IDX file (header truncated)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - start != expected:
        raise DataError(f"{path}: corrupt IDX file: header {dims} needs {expected} data bytes, "
                        f"found {len(raw) - start}")
    arr = np.frombuffer(raw, dtype, offset=start).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _default_root() -> Path:
    env = os.environ.get("XBAR_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xbar"


def _search_roots(data_dir) -> list[Path]:
    roots = [Path(data_dir).expanduser()] if data_dir is not None else []
    if os.environ.get("XBAR_DATA"):
        roots.append(Path(os.environ["XBAR_DATA"]).expanduser())
    roots.append(Path.home() / ".cache" / "xbar")
    return roots


def _absent_roots(data_dir, *, env: bool = True) -> list[str]:
    """The folders the user named (data_dir, $XBAR_DATA) that are not folders, as message parts."""
    out = []
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        out.append(f"--data-dir {data_dir}")
    if env and os.environ.get("XBAR_DATA") and not Path(os.environ["XBAR_DATA"]).expanduser().is_dir():
        out.append(f"XBAR_DATA={os.environ['XBAR_DATA']}")
    return out


def _check_roots(data_dir, found_in: Path | None = None, *, env: bool = True) -> None:
    """A folder the user named must exist: never fall back silently to another copy of the data.

    found_in: where the files were found; a missing $XBAR_DATA does not matter when they were
    found under data_dir, which is searched first.
    """
    if found_in is not None and data_dir is not None:
        root = Path(data_dir).expanduser()
        if found_in == root or root in found_in.parents:
            return
    absent = _absent_roots(data_dir, env=env)
    if absent:
        where = f"; the files in {found_in} were not used" if found_in is not None else ""
        raise DataError(f"{' and '.join(absent)}: no such folder{where}. Fix the path, or leave it "
                        "unset to use the default folders")


def _candidate_dirs(name: str, data_dir) -> list[Path]:
    # Name-specific folders come before the flat one, so a flat folder of MNIST files is never
    # mistaken for Fashion-MNIST when both datasets live under the same root.
    dirs = []
    for root in _search_roots(data_dir):
        if name == "cifar10":
            dirs += [root / "cifar10" / _CIFAR_DIR, root / _CIFAR_DIR, root]
        else:
            dirs += [root / name, root / _TORCHVISION_DIR[name] / "raw", root]
    if name == "fmnist":
        dirs.append(_DEBIAN_FMNIST)
    return list(dict.fromkeys(dirs))


def _missing(name: str, split: str, wanted: str, dirs: list[Path], data_dir=None) -> DataError:
    places = "\n".join(f"  {d}" for d in dirs)
    env = "" if os.environ.get("XBAR_DATA") else "($XBAR_DATA is not set.)\n"
    absent = _absent_roots(data_dir)
    if absent:
        env += f"({' and '.join(absent)}: no such folder.)\n"
    how = (f"To get them: run `xbar data fetch {name}` when online, or copy the standard files into a "
           f"folder and pass --data-dir FOLDER (or set XBAR_DATA=FOLDER).")
    if name == "fmnist":
        how += " On Debian/Ubuntu: `apt-get install dataset-fashion-mnist`."
    return DataError(f"{name} {split} files not found: looked for {wanted} in:\n{places}\n{env}{how}")


def _load_idx_pair(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    stems = _IDX_FILES[split]
    dirs = _candidate_dirs(name, data_dir)
    for d in dirs:
        found = [next((d / (s + ext) for ext in (".gz", "") if (d / (s + ext)).is_file()), None)
                 for s in stems]
        if all(found):
            _check_roots(data_dir, d)
            images, labels = read_idx(found[0]), read_idx(found[1])
            if images.shape[1:] != _SHAPES[name][1:] or labels.shape != images.shape[:1]:
                raise DataError(f"{d}: {name} files disagree: images {images.shape}, labels {labels.shape}")
            return images.reshape(len(images), -1), labels
    raise _missing(name, split, " and ".join(f"{s}[.gz]" for s in stems), dirs, data_dir)


def _load_cifar(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    batches = _CIFAR_BATCHES[split]
    dirs = _candidate_dirs("cifar10", data_dir)
    for d in dirs:
        if not all((d / b).is_file() for b in batches):
            continue
        _check_roots(data_dir, d)
        xs, ys = [], []
        for b in batches:
            try:
                with open(d / b, "rb") as fh:
                    batch = _ArrayUnpickler(fh, encoding="bytes").load()
                x = np.asarray(batch[b"data"], dtype=np.uint8)
                y = np.asarray(batch[b"labels"], dtype=np.int64)
            except _Refused as exc:
                raise DataError(f"{d / b}: refused to unpickle {exc} (a CIFAR-10 batch holds only "
                                "arrays, lists and bytes; this file is not one, or was tampered with)") from None
            except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError,
                    KeyError, TypeError, ValueError, MemoryError, OverflowError, RecursionError,
                    UnicodeDecodeError, zlib.error) as exc:  # what a bad pickle raises
                raise DataError(f"{d / b}: not a CIFAR-10 python batch: {exc!r}") from None
            if x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),):
                raise DataError(f"{d / b}: CIFAR-10 batch has data {x.shape} and labels {y.shape}, "
                                f"expected (n, 3072) and (n,)")
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)
    wanted = ", ".join(batches) if len(batches) == 1 else f"{batches[0]}..{batches[-1]}"
    raise _missing("cifar10", split, f"{_CIFAR_DIR}/{wanted}", dirs, data_dir)


class _Refused(Exception):
    """A pickle asked for a callable outside the allow-list."""


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only callables a pickled numpy array needs, under every module name numpy has used."""
    core = getattr(np, "_core", None) or np.core
    out: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        out[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        out[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    out[("_codecs", "encode")] = _latin1_encode   # how Python 3 protocol 2 pickles store bytes
    return out


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays, and nothing that runs code.

    Plain pickle.load calls whatever a file names (os.system included), and a sweep spec can point
    data_dir anywhere; CIFAR-10's python batches need only numpy's array reconstruction.
    """

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str):
        if _ArrayUnpickler._allowed is None:
            _ArrayUnpickler._allowed = _numpy_globals()
        try:
            return _ArrayUnpickler._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("a persistent id")


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # A fixed permutation makes the 1,437/360 split identical on every call and machine.
    perm = np.random.default_rng(0).permutation(len(bunch.target))
    n_train = len(perm) - _DIGITS_TEST
    idx = np.sort(perm[:n_train] if split == "train" else perm[n_train:])
    return bunch.data[idx], bunch.target[idx]


def load(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
         preprocess: str = "default") -> tuple[np.ndarray, np.ndarray]:
    """Load one split as (X, y): X float32 C-contiguous (n, C*H*W) in C×H×W order, y int64 (n,).

    name: one of DATASETS. split: "train" or "test".
    data_dir: folder searched first; then $XBAR_DATA, ~/.cache/xbar (and Debian's fmnist folder).
    preprocess: "default" (the seed study's: MNIST standardised, FMNIST in [0, 1], CIFAR-10
        per-channel standardised, digits /16) or "none" (pixels scaled to [0, 1] only).
    """
    _check_choice("dataset", name, DATASETS)
    _check_choice("split", split, SPLITS)
    _check_choice("preprocess", preprocess, PREPROCESS)
    if data_dir is not None:
        _check_roots(data_dir, env=False)   # a folder given explicitly must exist, for every dataset
    if name == "digits":
        raw, y = _load_digits(split)
        scale = np.float32(16)
    elif name == "cifar10":
        raw, y = _load_cifar(split, data_dir)
        scale = np.float32(255)
    else:
        raw, y = _load_idx_pair(name, split, data_dir)
        scale = np.float32(255)
    # Same float32 operation order as torchvision's ToTensor (x/255) then Normalize ((x-m)/s).
    x = raw.astype(np.float32) / scale
    if preprocess == "default" and name == "mnist":
        x = (x - np.float32(_MNIST_MEAN)) / np.float32(_MNIST_STD)
    elif preprocess == "default" and name == "cifar10":
        x = x.reshape(len(x), 3, -1)
        x = (x - np.asarray(_CIFAR_MEAN, np.float32)[:, None]) / np.asarray(_CIFAR_STD, np.float32)[:, None]
        x = x.reshape(len(x), -1)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path, md5: str, progress: bool) -> None:
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) if resp.headers else 0
            done = 0
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    pct = f" {100 * done // total}%" if total else ""
                    print(f"\r  {target.name}: {done / 1e6:.1f} MB{pct}", end="", file=sys.stderr)
        if progress:
            print(file=sys.stderr)
    except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DataError(f"could not download {url}: {reason}. Fetching needs internet access; offline, "
                        f"copy the standard files into a folder and pass --data-dir FOLDER "
                        f"(or set XBAR_DATA=FOLDER)") from None
    got = _md5(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: checksum mismatch (MD5 {got}, expected {md5}); the download is "
                        f"corrupt or the mirror changed, so nothing was kept. Try again later.")
    os.replace(part, target)


def fetch(name: str, dest: str | os.PathLike | None = None, *, progress: bool = True) -> Path | None:
    """Download dataset `name`'s official files, check their MD5 sums and unpack them.

    dest: root folder (default $XBAR_DATA, else ~/.cache/xbar); files go to `dest/name/`, where
        `load` finds them. progress: print progress to stderr.
    Returns the folder written, or None for digits, which ships with scikit-learn.
    Files already present with the right checksum are not downloaded again.
    """
    _check_choice("dataset", name, DATASETS)
    if name == "digits":
        if progress:
            print("digits ships with scikit-learn: nothing to fetch", file=sys.stderr)
        return None
    root = Path(dest).expanduser() if dest is not None else _default_root()
    folder = root / name
    if name == "cifar10" and all((folder / _CIFAR_DIR / b).is_file()
                                 for b in _CIFAR_BATCHES["train"] + _CIFAR_BATCHES["test"]):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    base, files = _SOURCES[name]
    for fname, md5 in files.items():
        target = folder / fname
        if target.is_file() and _md5(target) == md5:
            continue
        if progress:
            print(f"fetching {base + fname}", file=sys.stderr)
        _download(base + fname, target, md5, progress)
    if name == "cifar10":
        tar_path = folder / "cifar-10-python.tar.gz"
        try:
            with tarfile.open(tar_path, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(_CIFAR_DIR + "/")]
                tar.extractall(folder, members=members, filter="data")
        except (OSError, tarfile.TarError) as exc:
            shutil.rmtree(folder / _CIFAR_DIR, ignore_errors=True)
            raise DataError(f"{tar_path}: cannot extract: {exc}") from None
        tar_path.unlink()
    return folder
