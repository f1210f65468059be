"""Writing the store: create it, merge journal entries into a copy swapped in atomically, combine
stores."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import XbarError
from .journal import (
    DIGEST_ATTR,
    FORMAT,
    HISTORY_KEYS,
    LIBVER,
    NUMBERS,
    VERSION,
    StoreError,
    Warn,
    attrs_digest,
    bad_entry,
    h5py_module,
    histograms_of,
    pending,
    read_entry,
    run_arrays,
    supersedes,
    warn_stderr,
)
from .read import DAMAGED_ADVICE, info, open_store, verify

# ---- writing ---------------------------------------------------------------------------------------

def create(path: str | os.PathLike, spec: dict[str, Any], spec_hash: str, spec_file: str = "") -> None:
    """A new, empty store (atomically: it appears complete or not at all)."""
    from ..version import __version__
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    h5py = h5py_module()
    with h5py.File(tmp, "w", libver=LIBVER) as f:
        f.attrs.update(format=FORMAT, version=VERSION, spec=json.dumps(spec, default=str),   # grid order kept
                       spec_hash=spec_hash, spec_file=str(spec_file), xbar_version=__version__,
                       created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        f.create_group("runs")
    os.replace(tmp, path)


def merge(path: str | os.PathLike, entries: Iterable[Path] | None = None, *,
          spec_hash: str | None = None, warn: Warn | None = warn_stderr) -> int:
    """Merge journal entries into the store; returns how many runs were added or replaced.

    The store is copied, the copy extended and closed, then renamed over the original; merged
    journal files are deleted afterwards (a kill in between only leaves entries that the next
    merge finds already stored and drops). An entry that cannot be stored is moved to
    `<journal>/bad/` with a warning (see read_journal). spec_hash, when given, replaces the
    file's own (a --force run against a changed spec).
    """
    path = Path(path)
    entries = pending(path) if entries is None else list(entries)
    if not entries and spec_hash is None:
        return 0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.merge")
    added = 0
    done, bad = [], []
    try:
        shutil.copyfile(path, tmp)
        shutil.copymode(path, tmp)   # a store the user made group-readable stays so
        with _writing(path, tmp) as f:
            if spec_hash is not None:
                f.attrs["spec_hash"] = spec_hash
            runs = f["runs"]
            for e in entries:
                rec, why = read_entry(e)
                if why is not None:
                    if why:
                        bad.append((e, why))
                    continue
                key = rec["key"]
                if key in runs:
                    done.append(e)
                    if not supersedes(str(runs[key].attrs.get("status")), rec["status"]):
                        continue   # never duplicate; a failed run may be replaced by a retry
                    del runs[key]
                try:
                    _write_run(runs.create_group(key), rec)
                except Exception as exc:   # noqa: BLE001 - check_record missed it: keep the store clean
                    with contextlib.suppress(KeyError):
                        del runs[key]
                    bad.append((e, f"{type(exc).__name__}: {exc}"))
                    if e in done:
                        done.remove(e)
                    continue
                if e not in done:
                    done.append(e)
                added += 1
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno is None:   # h5py's own errors: the store is damaged
            raise StoreError(f"{path}: cannot add runs to it ({exc}); {DAMAGED_ADVICE}") from None
        raise StoreError(f"{path}: cannot write the merged copy {tmp.name} beside it ({exc.strerror or exc}); "
                         "free disk space and run the sweep again: finished runs wait in the journal") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    for e in done:
        with contextlib.suppress(FileNotFoundError):
            e.unlink()
    for e, why in bad:
        bad_entry(e, why, True, warn)
    return added


@contextlib.contextmanager
def _writing(path: Path, tmp: Path):
    """The copy `tmp` of store `path` opened for writing; a damaged store becomes a StoreError."""
    h5py = h5py_module()
    try:
        f = h5py.File(tmp, "a", libver=LIBVER)
    except Exception as exc:   # noqa: BLE001 - h5py raises several kinds on damaged files
        raise StoreError(f"{path}: cannot open a copy of it for writing ({type(exc).__name__}: {exc}); "
                         f"{DAMAGED_ADVICE}") from None
    try:
        yield f
    except (XbarError, OSError):
        raise   # OSError: merge() tells a full disk from a damaged file
    except Exception as exc:   # noqa: BLE001
        raise StoreError(f"{path}: cannot add runs to it ({type(exc).__name__}: {exc}); {DAMAGED_ADVICE}") from None
    finally:
        with contextlib.suppress(Exception):
            f.close()


def combine(path: str | os.PathLike, *others: str | os.PathLike) -> int:
    """Copy into store `path` the runs of other stores of the same spec that it lacks (results
    of one grid computed on several machines); returns how many were added. Atomic like merge()."""
    path = Path(path)
    mine = info(path)
    for o in others:
        theirs = info(o)
        if theirs.get("spec_hash") != mine.get("spec_hash"):
            raise StoreError(f"{o}: another spec (hash {theirs.get('spec_hash')}) than {path} "
                             f"({mine.get('spec_hash')}); only stores of one spec combine")
        verify(o)
    h5py = h5py_module()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.merge")
    shutil.copyfile(path, tmp)
    shutil.copymode(path, tmp)   # a store the user made group-readable stays so
    added = 0
    try:
        with h5py.File(tmp, "a", libver=LIBVER) as f:
            for o in others:
                with open_store(o) as src:
                    for key in src["runs"]:
                        if key not in f["runs"]:
                            src.copy(src["runs"][key], f["runs"], name=key)
                            added += 1
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return added


def _write_run(g, rec: dict[str, Any]) -> None:
    def num(v):
        return float("nan") if v is None else float(v)

    g.attrs.update(
        key=rec["key"], config=json.dumps(rec["config"], sort_keys=True), point=json.dumps(rec.get("point") or {}),
        status=rec["status"], message=rec.get("message") or "", seed=int(rec["config"].get("seed", 0)),
        **{k: num(rec.get(k)) for k in NUMBERS},
        **{k: str((rec.get("env") or {}).get(k, "")) for k in ("xbar_version", "numpy_version", "numba_version",
                                                              "python", "host")},
        finished=rec.get("finished") or "", metrics=json.dumps(rec.get("metrics") or {}))
    if rec.get("diverged_epoch") is not None:
        g.attrs["diverged_epoch"] = int(rec["diverged_epoch"])
    g.attrs[DIGEST_ATTR] = attrs_digest(g.attrs)

    def data(group, name, arr):
        # Fletcher-32 (needs chunked storage) makes a flipped bit a read error, not a wrong number.
        group.create_dataset(name, data=arr, chunks=True if arr.size else None, fletcher32=bool(arr.size))

    arrays = run_arrays(rec)
    h = g.create_group("history")
    lay = g.create_group("layers")
    for k, arr in arrays.items():
        data(h if k in HISTORY_KEYS else lay, k, arr)
    hs = g.create_group("hist")
    for i, (counts, edges) in enumerate(histograms_of(rec)):
        sub = hs.create_group(str(i))
        data(sub, "counts", counts)
        data(sub, "edges", edges)
    if rec.get("traceback"):
        g.create_dataset("traceback", data=rec["traceback"])
