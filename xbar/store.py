"""The sweep store: one HDF5 file of finished runs, written by one process, safe against kills.

Schema (format "xbar-store", version 1)::

    /                       attrs: format, version, spec (JSON), spec_hash, spec_file, created, xbar_version
    /runs/<key>/            one group per run; key = stable hash of the run's resolved config
        attrs:  config (JSON of the resolved TrainConfig; pruning sweeps add command = "prune" and the
                PruneConfig fields), point (JSON of the grid values of this run), metrics (JSON of
                extra final results: pruning's tiles, energy_pj, accuracy_before, ... before/after),
                key, status ("ok" | "diverged" | "error"), message, seed, test_accuracy,
                train_accuracy (NaN when not measured or not ok), wall_seconds, train_seconds,
                xbar_version, numpy_version, numba_version, python, host, finished (UTC ISO time)
        history/<name>      per-epoch float64 vectors: epoch, test_accuracy, train_accuracy (a full
                            pass after the epoch, if eval_train), step_accuracy (running accuracy of
                            the epoch's batches), loss, test_loss, step_loss, seconds, lr (NaN where
                            not measured)
        layers/<name>       (epochs, layers) float64: w_min, w_max (stored weights), g_min, g_max
                            (programmed conductances in µS, NaN for layers without a crossbar)
        hist/<i>/counts     final conductance histogram of layer i (all devices of the layer), int64
        hist/<i>/edges      its bin edges in µS (counts + 1)
        traceback           (status "error" only) the worker's traceback, a string

Crash safety: workers never touch the file. Finished runs go first to a journal folder beside it
(`<file>.journal/<key>.json`, each written to a temporary name and renamed). The writer merges
journal entries into a copy of the store and swaps it in with an atomic rename, so the store on
disk is always a complete, readable file; a kill (even SIGKILL) at any moment loses at most the
runs in flight, and the next start merges whatever the journal still holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, XbarError

FORMAT, VERSION = "xbar-store", 1
HISTORY_KEYS = ("epoch", "test_accuracy", "train_accuracy", "step_accuracy", "loss", "test_loss", "step_loss",
                "seconds", "lr")
LAYER_KEYS = ("w_min", "w_max", "g_min", "g_max")


class StoreError(XbarError):
    """A store file that cannot be used (unreadable, another spec, another format)."""


def _h5py():
    import h5py
    return h5py


def journal_dir(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".journal")


# ---- writing ---------------------------------------------------------------------------------------

def write_journal(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Save one finished run's record atomically in the journal of store `path`."""
    d = journal_dir(path)
    d.mkdir(parents=True, exist_ok=True)
    target = d / f"{record['key']}.json"
    tmp = d / f".{record['key']}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, default=_json_default)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def pending(path: str | os.PathLike) -> list[Path]:
    """Journal entries not yet merged into the store."""
    d = journal_dir(path)
    return sorted(d.glob("*.json")) if d.is_dir() else []


def create(path: str | os.PathLike, spec: dict[str, Any], spec_hash: str, spec_file: str = "") -> None:
    """A new, empty store (atomically: it appears complete or not at all)."""
    from . import __version__
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    h5py = _h5py()
    with h5py.File(tmp, "w") as f:
        f.attrs.update(format=FORMAT, version=VERSION, spec=json.dumps(spec, sort_keys=True),
                       spec_hash=spec_hash, spec_file=str(spec_file), xbar_version=__version__,
                       created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        f.create_group("runs")
    os.replace(tmp, path)


def merge(path: str | os.PathLike, entries: Iterable[Path] | None = None, *,
          spec_hash: str | None = None) -> int:
    """Merge journal entries into the store; returns how many runs were added or replaced.

    The store is copied, the copy extended and closed, then renamed over the original; merged
    journal files are deleted afterwards (a kill in between only leaves entries that the next
    merge finds already stored and drops). spec_hash, when given, replaces the file's own (a
    --force run against a changed spec).
    """
    path = Path(path)
    entries = pending(path) if entries is None else list(entries)
    if not entries and spec_hash is None:
        return 0
    h5py = _h5py()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.merge")
    shutil.copyfile(path, tmp)
    added = 0
    try:
        with h5py.File(tmp, "a") as f:
            if spec_hash is not None:
                f.attrs["spec_hash"] = spec_hash
            runs = f["runs"]
            for e in entries:
                try:
                    rec = json.loads(e.read_text())
                except (OSError, json.JSONDecodeError):
                    continue   # a torn temp cannot be here (renamed only when complete); skip oddities
                key = rec["key"]
                if key in runs:
                    if runs[key].attrs.get("status") != "error" or rec.get("status") == "error":
                        continue   # never duplicate; a failed run may be replaced by a retry
                    del runs[key]
                _write_run(runs.create_group(key), rec)
                added += 1
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    for e in entries:
        with contextlib.suppress(FileNotFoundError):
            e.unlink()
    return added


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
    h5py = _h5py()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.merge")
    shutil.copyfile(path, tmp)
    added = 0
    try:
        with h5py.File(tmp, "a") as f:
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
    nan = float("nan")

    def num(v):
        return nan if v is None else float(v)

    g.attrs.update(
        key=rec["key"], config=json.dumps(rec["config"], sort_keys=True), point=json.dumps(rec.get("point", {})),
        status=rec["status"], message=rec.get("message", ""), seed=int(rec["config"].get("seed", 0)),
        test_accuracy=num(rec.get("test_accuracy")), train_accuracy=num(rec.get("train_accuracy")),
        wall_seconds=num(rec.get("wall_seconds")), train_seconds=num(rec.get("train_seconds")),
        **{k: str(rec.get("env", {}).get(k, "")) for k in ("xbar_version", "numpy_version", "numba_version",
                                                            "python", "host")},
        finished=rec.get("finished", ""), metrics=json.dumps(rec.get("metrics") or {}))
    hist = rec.get("history") or []
    h = g.create_group("history")
    for k in HISTORY_KEYS:
        h.create_dataset(k, data=np.array([num(e.get(k)) for e in hist], dtype=np.float64))
    lay = g.create_group("layers")
    for k in LAYER_KEYS:
        rows = [e.get("layers", {}).get(k, []) for e in hist]
        width = max((len(r) for r in rows), default=0)
        arr = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            arr[i, :len(r)] = [num(v) for v in r]
        lay.create_dataset(k, data=arr)
    hs = g.create_group("hist")
    for i, hh in enumerate(rec.get("histograms") or []):
        sub = hs.create_group(str(i))
        sub.create_dataset("counts", data=np.asarray(hh["counts"], dtype=np.int64))
        sub.create_dataset("edges", data=np.asarray(hh["edges"], dtype=np.float64))
    if rec.get("traceback"):
        g.create_dataset("traceback", data=rec["traceback"])


# ---- reading ---------------------------------------------------------------------------------------

def open_store(path: str | os.PathLike):
    """The store opened read-only; a clear StoreError if it is not one."""
    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such store file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT or "runs" not in f:
        f.close()
        raise StoreError(f"{path}: not an xbar store (format attribute {FORMAT!r} missing)")
    return f


def info(path: str | os.PathLike) -> dict[str, Any]:
    """The file-level attributes and the stored run keys with their status."""
    with open_store(path) as f:
        out = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        out["spec"] = json.loads(out.get("spec", "{}"))
        out["runs"] = {k: str(f["runs"][k].attrs.get("status", "")) for k in f["runs"]}
    return out


def stored_keys(path: str | os.PathLike) -> dict[str, str]:
    """key -> status of every run in the store (empty if the file does not exist)."""
    return info(path)["runs"] if Path(path).is_file() else {}


def records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One flat dict per run: config fields, grid point keys (prefixed 'grid.' where not config
    fields), final metrics and run metadata. Reads attributes only, never the histories."""
    rows = []
    with open_store(path) as f:
        runs = f["runs"]
        for key in runs:
            a = runs[key].attrs
            cfg = json.loads(a["config"])
            point = json.loads(a.get("point", "{}"))
            row = {"key": key}
            row.update(cfg)
            for k, v in point.items():
                if k not in cfg:
                    row[k] = v
            for k, v in json.loads(a.get("metrics", "{}")).items():
                row.setdefault(k, v)
            for k in ("status", "message", "test_accuracy", "train_accuracy", "wall_seconds", "train_seconds",
                      "finished", "xbar_version"):
                v = a.get(k)
                row[k] = v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)
            rows.append(row)
    return rows


def load(path: str | os.PathLike):
    """A tidy table (pandas DataFrame), one row per run: config columns + final metrics.

    Reads only run attributes; use :func:`history` for per-epoch curves.
    """
    import pandas as pd
    rows = records(path)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values([c for c in ("network", "rule", "update", "bits", "range", "quant", "seed")
                             if c in df.columns], kind="stable").reset_index(drop=True)
    return df


def history(path: str | os.PathLike, key: str) -> dict[str, np.ndarray]:
    """Per-epoch vectors of one run (history/* and layers/*)."""
    with open_store(path) as f:
        if key not in f["runs"]:
            raise StoreError(f"{path}: no run {key!r}")
        g = f["runs"][key]
        out = {k: g["history"][k][()] for k in g["history"]}
        out.update({k: g["layers"][k][()] for k in g["layers"]})
    return out


def histograms(path: str | os.PathLike, key: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Final conductance histograms of one run: [(counts, edges)] per layer."""
    with open_store(path) as f:
        g = f["runs"][key]["hist"]
        return [(g[i]["counts"][()], g[i]["edges"][()]) for i in sorted(g, key=int)]


def check_writable(path: str | os.PathLike) -> None:
    """Refuse an output path that cannot be written, before any work starts."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{path.name}.{os.getpid()}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"--out {path}: the file exists and is not writable")
