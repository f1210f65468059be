"""Reading the store: info, verification, the tidy table of runs (journal included), one run's
history and histograms."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .journal import (
    DIGEST_ATTR,
    FORMAT,
    HISTORY_KEYS,
    KEY_PATTERN,
    LAYER_KEYS,
    NUMBERS,
    STATUSES,
    StoreError,
    Warn,
    attrs_digest,
    h5py_module,
    histograms_of,
    is_number,
    journal_dir,
    read_entry,
    read_journal,
    run_arrays,
    run_key,
    supersedes,
    warn_stderr,
)

# ---- reading ---------------------------------------------------------------------------------------

DAMAGED_ADVICE = "restore it from a backup, or move it away and run the sweep again"


def open_store(path: str | os.PathLike):
    """The store opened read-only; a clear StoreError if it is not one."""
    h5py = h5py_module()
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such store file")
    try:
        f = h5py.File(path, "r")
    except Exception as exc:   # noqa: BLE001 - h5py raises OSError, and others on damaged files
        raise StoreError(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        ok = f.attrs.get("format") == FORMAT and "runs" in f
    except Exception:   # noqa: BLE001 - damaged root attributes
        ok = False
    if not ok:
        f.close()
        raise StoreError(f"{path}: not an xbar store (format attribute {FORMAT!r} missing or damaged)")
    return f


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def info(path: str | os.PathLike) -> dict[str, Any]:
    """The file-level attributes and the stored run keys with their status."""
    with open_store(path) as f:
        try:
            out = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            out["spec"] = json.loads(out.get("spec", "{}"))
            keys = list(f["runs"])
        except Exception as exc:   # noqa: BLE001
            raise StoreError(f"{path}: the file's attributes or run index are damaged ({type(exc).__name__}: "
                             f"{exc}); {DAMAGED_ADVICE}") from None
        out["runs"] = {}
        for k in keys:
            try:
                out["runs"][k] = _text(f["runs"][k].attrs.get("status", ""))
            except Exception as exc:   # noqa: BLE001
                raise _damaged(path, k, exc) from None
    return out


def _damaged(path, key: str, exc: BaseException) -> StoreError:
    why = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
    return StoreError(f"{path}: run group /runs/{key} is damaged ({why}); {DAMAGED_ADVICE}")


def stored_keys(path: str | os.PathLike) -> dict[str, str]:
    """key -> status of every run in the store (empty if the file does not exist)."""
    return info(path)["runs"] if Path(path).is_file() else {}


def verify(path: str | os.PathLike, *, deep: bool = False) -> None:
    """Check every run group against the schema; the first damaged one raises a StoreError naming
    the file and the group.

    The quick check (what `xbar sweep` and `xbar report` do first) reads each group's key, config
    and status: on stores written with checksums, reading one attribute checks them all, and a
    config changed by a flipped bit no longer hashes to its key. deep also reads every array (about
    5 ms a run); a damaged array met later by `history`/`histograms` raises the same StoreError.
    """
    with open_store(path) as f:
        try:
            json.loads(_text(f.attrs["spec"]))
            runs = f["runs"]
            keys = list(runs)
        except Exception as exc:   # noqa: BLE001
            raise StoreError(f"{path}: the file's attributes or run index are damaged ({type(exc).__name__}: "
                             f"{exc}); {DAMAGED_ADVICE}") from None
        for key in keys:
            try:
                _check_group(runs[key], key, deep)
            except Exception as exc:   # noqa: BLE001 - h5py raises many kinds on damaged files
                raise _damaged(path, key, exc) from None


def _check_group(g, key: str, deep: bool) -> None:
    a = g.attrs
    if _text(a["key"]) != key or not KEY_PATTERN.fullmatch(key):
        raise StoreError(f"its key attribute {_text(a['key'])!r} is not its name")
    config = json.loads(_text(a["config"]))
    if not isinstance(config, dict) or run_key(config) != key:
        raise StoreError("its config does not hash to its key")
    if _text(a["status"]) not in STATUSES:
        raise StoreError(f"status {_text(a['status'])!r}")
    if DIGEST_ATTR in a and _text(a[DIGEST_ATTR]) != attrs_digest(a):   # stores written before it: no digest
        raise StoreError("its attributes do not match their digest")
    missing = {"history", "layers", "hist"} - set(g)
    if missing:
        raise StoreError(f"{', '.join(sorted(missing))} missing")
    if not deep:
        return
    _attrs_row(g, key)
    n = None
    for name in HISTORY_KEYS:
        v = g["history"][name][()]
        if v.ndim != 1 or (n is not None and len(v) != n):
            raise StoreError(f"history/{name} has shape {v.shape}")
        n = len(v)
    for name in LAYER_KEYS:
        v = g["layers"][name][()]
        if v.ndim != 2 or v.shape[0] != n:
            raise StoreError(f"layers/{name} has shape {v.shape}")
    for i in g["hist"]:
        c, e = g["hist"][i]["counts"][()], g["hist"][i]["edges"][()]
        if c.ndim != 1 or e.shape != (len(c) + 1,):
            raise StoreError(f"hist/{i} has counts {c.shape} and edges {e.shape}")
    if "traceback" in g:
        g["traceback"][()]


def _attrs_row(g, key: str) -> dict[str, Any]:
    """A run group's attributes, decoded (config, point and metrics parsed)."""
    a = g.attrs
    row: dict[str, Any] = {"config": json.loads(_text(a["config"])), "point": json.loads(_text(a.get("point", "{}"))),
                           "metrics": json.loads(_text(a.get("metrics", "{}")))}
    if not all(isinstance(row[k], dict) for k in ("config", "point", "metrics")):
        raise StoreError("config, point or metrics is not a JSON table")
    for k in ("status", "message", *NUMBERS, "finished", "xbar_version", "diverged_epoch"):
        v = a.get(k)
        row[k] = _text(v) if isinstance(v, (bytes, str)) else (v.item() if isinstance(v, np.generic) else v)
    bad = next((k for k in NUMBERS if not is_number(row[k])), None)
    if bad or (row["diverged_epoch"] is not None and not isinstance(row["diverged_epoch"], int)):
        raise StoreError(f"{bad or 'diverged_epoch'} is not a number")
    return row


def _flat(key: str, cfg: dict, point: dict, metrics: dict, fields: dict) -> dict[str, Any]:
    row = {"key": key}
    row.update(cfg)
    for k, v in point.items():
        if k not in cfg:
            row[k] = v
    for k, v in metrics.items():
        row.setdefault(k, v)
    row.update(fields)
    return row


def _journal_row(rec: dict[str, Any]) -> dict[str, Any]:
    nan = float("nan")
    fields = {k: rec.get(k) or "" for k in ("status", "message")}
    fields.update({k: nan if rec.get(k) is None else float(rec[k]) for k in NUMBERS})
    fields.update(finished=rec.get("finished") or "", xbar_version=(rec.get("env") or {}).get("xbar_version", ""),
                  diverged_epoch=rec.get("diverged_epoch"))
    return _flat(rec["key"], rec["config"], rec.get("point") or {}, rec.get("metrics") or {}, fields)


def records(path: str | os.PathLike, *, journal: bool = True,
            warn: Warn | None = warn_stderr) -> list[dict[str, Any]]:
    """One flat dict per run: config fields, grid point keys (prefixed 'grid.' where not config
    fields), final metrics and run metadata. Reads attributes only, never the histories.

    journal: also the finished runs still in the journal (a sweep running, or killed before its
    merge), as the next merge will store them.
    """
    # The journal first: an entry merged while we read is then found in the store.
    pend = read_journal(path, warn=warn) if journal else {}
    rows: dict[str, dict[str, Any]] = {}
    with open_store(path) as f:
        runs = f["runs"]
        for key in runs:
            try:
                r = _attrs_row(runs[key], key)
            except Exception as exc:   # noqa: BLE001
                raise _damaged(path, key, exc) from None
            fields = {k: r[k] for k in ("status", "message", *NUMBERS, "finished", "xbar_version",
                                        "diverged_epoch")}
            rows[key] = _flat(key, r["config"], r["point"], r["metrics"], fields)
    for key, rec in pend.items():
        if supersedes(rows[key]["status"] if key in rows else None, rec["status"]):
            rows[key] = _journal_row(rec)
    return list(rows.values())


def load(path: str | os.PathLike, *, journal: bool = True):
    """A tidy table (pandas DataFrame), one row per run: config columns + final metrics.

    Reads only run attributes; use :func:`history` for per-epoch curves. journal: include the
    finished runs not merged yet (see records).
    """
    import pandas as pd
    rows = records(path, journal=journal)
    df = pd.DataFrame(rows)
    if len(df):
        if "diverged_epoch" in df.columns:
            df["diverged_epoch"] = df["diverged_epoch"].astype("Int64")
        df = df.sort_values([c for c in ("network", "rule", "update", "bits", "range", "quant", "seed")
                             if c in df.columns], kind="stable").reset_index(drop=True)
    return df


def _journal_record(path, key: str) -> dict[str, Any] | None:
    e = journal_dir(path) / f"{key}.json"
    rec, why = read_entry(e) if e.is_file() else (None, "")
    return rec if why is None else None


def _stored_wins(f, path, key: str, rec: dict[str, Any] | None) -> bool:
    """Whether run `key` is read from the store (else from its journal record `rec`)."""
    if key not in f["runs"]:
        return False
    try:
        status = _text(f["runs"][key].attrs["status"])
    except Exception as exc:   # noqa: BLE001
        raise _damaged(path, key, exc) from None
    return rec is None or not supersedes(status, rec["status"])


def history(path: str | os.PathLike, key: str) -> dict[str, np.ndarray]:
    """Per-epoch vectors of one run (history/* and layers/*), from the store or its journal."""
    rec = _journal_record(path, key)
    with open_store(path) as f:
        if _stored_wins(f, path, key, rec):
            try:
                g = f["runs"][key]
                out = {k: g["history"][k][()] for k in g["history"]}
                out.update({k: g["layers"][k][()] for k in g["layers"]})
            except Exception as exc:   # noqa: BLE001
                raise _damaged(path, key, exc) from None
            return out
    if rec is None:
        raise StoreError(f"{path}: no run {key!r}")
    return run_arrays(rec)


def histograms(path: str | os.PathLike, key: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Final conductance histograms of one run: [(counts, edges)] per layer, from the store or its journal."""
    rec = _journal_record(path, key)
    with open_store(path) as f:
        if _stored_wins(f, path, key, rec):
            try:
                g = f["runs"][key]["hist"]
                return [(g[i]["counts"][()], g[i]["edges"][()]) for i in sorted(g, key=int)]
            except Exception as exc:   # noqa: BLE001
                raise _damaged(path, key, exc) from None
    if rec is None:
        raise StoreError(f"{path}: no run {key!r}")
    return histograms_of(rec)


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
        raise ConfigError(f"--out {path}: cannot write there ({exc.strerror or exc}); choose another --out") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"--out {path}: the file exists and is not writable; choose another --out")
