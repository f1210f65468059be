"""The sweep store: one HDF5 file of finished runs, written by one process, safe against kills.

Schema (format "xbar-store", version 1)::

    /                       attrs: format, version, spec (JSON), spec_hash, spec_file, created, xbar_version
    /runs/<key>/            one group per run; key = run_key(config), a stable hash of the resolved config
        attrs:  config (JSON of the resolved TrainConfig; pruning sweeps add command = "prune" and the
                PruneConfig fields), point (JSON of the grid values of this run), metrics (JSON of
                extra final results: pruning's tiles, energy_pj, accuracy_before, ... before/after),
                key, status ("ok" | "stopped" | "diverged" | "error"), message, seed, test_accuracy,
                train_accuracy (NaN when not measured or not ok), wall_seconds, train_seconds,
                diverged_epoch (status "diverged" only: the epoch the loss exploded in),
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
runs in flight, and the next start merges whatever the journal still holds. Readers (`load`,
`history`, `xbar report`) see the journal's finished runs too, before they are merged.

Damage: a journal entry that cannot be stored (torn, `{}`, no config, a key that is not its
config's) is moved to `<file>.journal/bad/` with a warning, and its run is done again. Stores
are written with HDF5's checksummed metadata (format 1.10) and Fletcher-32 checksums on every
array, so flipped bits are found by :func:`verify` and reported with the run group they hit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, XbarError
from .jsonio import json_default

FORMAT, VERSION = "xbar-store", 1
HISTORY_KEYS = ("epoch", "test_accuracy", "train_accuracy", "step_accuracy", "loss", "test_loss", "step_loss",
                "seconds", "lr")
LAYER_KEYS = ("w_min", "w_max", "g_min", "g_max")
STATUSES = ("ok", "stopped", "diverged", "error")
NUMBERS = ("test_accuracy", "train_accuracy", "wall_seconds", "train_seconds")
# Fields that name where things are, not what is computed: left out of a run's identity.
NOT_IDENTITY = ("data_dir",)
# Fields added after stores existed: left out of a run's identity while at their default, so runs
# stored before they existed keep their keys (and are not run again).
NEUTRAL_DEFAULTS = {"ir_drop": "none", "r_wire_ohm": 0.0, "v_read": 0.2, "ir_drop_train": True,
                    "adc_offset_lsb": 0.0, "adc_gain_rel": 0.0, "adc_inl_lsb": 0.0, "init": None}
# Checksummed object headers (superblock v3, object header v2) need HDF5 >= 1.10 to read.
LIBVER = ("v110", "latest")
_KEY = re.compile(r"[0-9a-f]{16}")
BAD_DIR = "bad"

Warn = Callable[[str], None]


class StoreError(XbarError):
    """A store file that cannot be used (unreadable, damaged, another spec, another format)."""


def _h5py():
    import h5py
    return h5py


def warn_stderr(text: str) -> None:
    print(f"xbar: warning: {text}", file=sys.stderr, flush=True)


def run_key(config: dict[str, Any]) -> str:
    """The stable identity of a resolved run config (16 hex digits)."""
    ident = {k: v for k, v in config.items()
             if k not in NOT_IDENTITY and not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def journal_dir(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".journal")


# ---- the journal -----------------------------------------------------------------------------------

def write_journal(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Save one finished run's record atomically in the journal of store `path`."""
    d = journal_dir(path)
    d.mkdir(parents=True, exist_ok=True)
    target = d / f"{record['key']}.json"
    tmp = d / f".{record['key']}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, default=json_default)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def pending(path: str | os.PathLike) -> list[Path]:
    """Journal entries not yet merged into the store (valid or not: see read_journal)."""
    d = journal_dir(path)
    return sorted(d.glob("*.json")) if d.is_dir() else []


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(v) -> bool:
    return isinstance(v, list) and all(x is None or _is_number(x) for x in v)


def check_record(rec: Any, key: str | None = None) -> str:
    """Why a journal record cannot be stored under `key` ('' when it can)."""
    if not isinstance(rec, dict) or not rec:
        return "empty, or not a run record"
    k = rec.get("key")
    if not isinstance(k, str) or not _KEY.fullmatch(k):
        return f"key = {k!r} is not a run key (16 hex digits)"
    if key is not None and k != key:
        return f"it carries the key {k} of another run"
    cfg = rec.get("config")
    if not isinstance(cfg, dict) or not cfg:
        return "it has no config"
    if run_key(cfg) != k:
        return f"its config is not the one of run {k} (it hashes to {run_key(cfg)})"
    if rec.get("status") not in STATUSES:
        return f"status = {rec.get('status')!r}: expected one of {', '.join(STATUSES)}"
    for f in NUMBERS:
        if rec.get(f) is not None and not _is_number(rec[f]):
            return f"{f} = {rec[f]!r} is not a number"
    de = rec.get("diverged_epoch")
    if de is not None and (not isinstance(de, int) or isinstance(de, bool)):
        return f"diverged_epoch = {de!r} is not an integer"
    for f, kind in (("point", dict), ("metrics", dict), ("env", dict), ("message", str), ("finished", str),
                    ("traceback", str), ("history", list), ("histograms", list)):
        if rec.get(f) is not None and not isinstance(rec[f], kind):
            return f"{f} is a {type(rec[f]).__name__}, expected a {kind.__name__}"
    for i, e in enumerate(rec.get("history") or []):
        if not isinstance(e, dict):
            return f"history[{i}] is not a table"
        bad = next((h for h in HISTORY_KEYS if e.get(h) is not None and not _is_number(e[h])), None)
        if bad:
            return f"history[{i}].{bad} = {e[bad]!r} is not a number"
        lay = e.get("layers", {})
        if not isinstance(lay, dict) or not all(_numbers(lay.get(h, [])) for h in LAYER_KEYS):
            return f"history[{i}].layers is not lists of numbers"
    for i, h in enumerate(rec.get("histograms") or []):
        if (not isinstance(h, dict) or not _numbers(h.get("counts")) or not _numbers(h.get("edges"))
                or len(h["edges"]) != len(h["counts"]) + 1 or None in h["counts"]
                or not all(float(c).is_integer() for c in h["counts"])):
            return f"histograms[{i}] is not counts and edges (one more edge than counts)"
    return ""


def read_journal(path: str | os.PathLike, *, quarantine: bool = False,
                 warn: Warn | None = warn_stderr) -> dict[str, dict[str, Any]]:
    """key -> record of the journal's entries that can be stored.

    Each other entry gets a one-line warning; with quarantine (the sweep, which owns the journal)
    it is also moved to `<journal>/bad/`, so it no longer counts as a finished run.
    """
    out: dict[str, dict[str, Any]] = {}
    for e in pending(path):
        rec, why = _read_entry(e)
        if why is None:
            out[e.stem] = rec
        elif why:   # "" = the entry was merged (and removed) while we read
            _bad_entry(e, why, quarantine, warn)
    return out


def _read_entry(e: Path) -> tuple[dict | None, str | None]:
    try:
        text = e.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, ""
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({exc})"
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"truncated or not JSON ({exc})"
    why = check_record(rec, e.stem)
    return (rec, None) if not why else (None, why)


def _bad_entry(e: Path, why: str, quarantine: bool, warn: Warn | None) -> None:
    if quarantine:
        bad = e.parent / BAD_DIR
        bad.mkdir(exist_ok=True)
        target = bad / e.name
        n = 1
        while target.exists():
            target = bad / f"{e.stem}.{n}.json"
            n += 1
        with contextlib.suppress(FileNotFoundError):
            os.replace(e, target)
        todo = f"moved to {bad}/; its run is done again unless already stored"
    else:
        todo = "left out; the next `xbar sweep` sets it aside and does its run again"
    if warn is not None:
        warn(f"{e}: journal entry cannot be stored: {why}; {todo}")


def _supersedes(stored_status: str | None, new_status: str) -> bool:
    """Whether a journal record replaces the stored run of its key: only a retry of a failed run."""
    return stored_status is None or (stored_status == "error" and new_status != "error")


# ---- temporary files of killed writers ---------------------------------------------------------------

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<kind>merge|tmp|probe)$")


def writer_alive(pid: int) -> bool:
    """Whether the process that names a temporary file may still be writing it."""
    if pid == os.getpid():
        return False   # called before this process writes anything: its own leftovers are stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2 ** 31
    return True


def cleanup(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of store `path` left behind: copies of an interrupted merge,
    torn journal and create/probe temporaries (only files whose writing process is gone)."""
    path = Path(path)
    places = [(path.parent, f".{path.name}."), (journal_dir(path), "."), (Path(str(path) + ".cache"), ".")]
    removed = []
    for folder, prefix in places:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _TEMP.match(p.name)
            if (m and p.name.startswith(prefix) and p.is_file() and not p.is_symlink()
                    and not writer_alive(int(m["pid"]))):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


# ---- writing ---------------------------------------------------------------------------------------

def create(path: str | os.PathLike, spec: dict[str, Any], spec_hash: str, spec_file: str = "") -> None:
    """A new, empty store (atomically: it appears complete or not at all)."""
    from .version import __version__
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    h5py = _h5py()
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
                rec, why = _read_entry(e)
                if why is not None:
                    if why:
                        bad.append((e, why))
                    continue
                key = rec["key"]
                if key in runs:
                    done.append(e)
                    if not _supersedes(str(runs[key].attrs.get("status")), rec["status"]):
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
        _bad_entry(e, why, True, warn)
    return added


@contextlib.contextmanager
def _writing(path: Path, tmp: Path):
    """The copy `tmp` of store `path` opened for writing; a damaged store becomes a StoreError."""
    h5py = _h5py()
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
    h5py = _h5py()
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


def _arrays(rec: dict[str, Any]) -> dict[str, np.ndarray]:
    """A record's per-epoch vectors (history/*) and per-layer tables (layers/*), as stored."""
    nan = float("nan")

    def num(v):
        return nan if v is None else float(v)

    hist = rec.get("history") or []
    out = {k: np.array([num(e.get(k)) for e in hist], dtype=np.float64) for k in HISTORY_KEYS}
    for k in LAYER_KEYS:
        rows = [e.get("layers", {}).get(k, []) for e in hist]
        width = max((len(r) for r in rows), default=0)
        arr = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            arr[i, :len(r)] = [num(v) for v in r]
        out[k] = arr
    return out


def _histograms_of(rec: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(h["counts"], dtype=np.int64), np.asarray(h["edges"], dtype=np.float64))
            for h in rec.get("histograms") or []]


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

    def data(group, name, arr):
        # Fletcher-32 (needs chunked storage) makes a flipped bit a read error, not a wrong number.
        group.create_dataset(name, data=arr, chunks=True if arr.size else None, fletcher32=bool(arr.size))

    arrays = _arrays(rec)
    h = g.create_group("history")
    lay = g.create_group("layers")
    for k, arr in arrays.items():
        data(h if k in HISTORY_KEYS else lay, k, arr)
    hs = g.create_group("hist")
    for i, (counts, edges) in enumerate(_histograms_of(rec)):
        sub = hs.create_group(str(i))
        data(sub, "counts", counts)
        data(sub, "edges", edges)
    if rec.get("traceback"):
        g.create_dataset("traceback", data=rec["traceback"])


# ---- reading ---------------------------------------------------------------------------------------

DAMAGED_ADVICE = "restore it from a backup, or move it away and run the sweep again"


def open_store(path: str | os.PathLike):
    """The store opened read-only; a clear StoreError if it is not one."""
    h5py = _h5py()
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
    if _text(a["key"]) != key or not _KEY.fullmatch(key):
        raise StoreError(f"its key attribute {_text(a['key'])!r} is not its name")
    config = json.loads(_text(a["config"]))
    if not isinstance(config, dict) or run_key(config) != key:
        raise StoreError("its config does not hash to its key")
    if _text(a["status"]) not in STATUSES:
        raise StoreError(f"status {_text(a['status'])!r}")
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
    bad = next((k for k in NUMBERS if not _is_number(row[k])), None)
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
        if _supersedes(rows[key]["status"] if key in rows else None, rec["status"]):
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
    rec, why = _read_entry(e) if e.is_file() else (None, "")
    return rec if why is None else None


def _stored_wins(f, path, key: str, rec: dict[str, Any] | None) -> bool:
    """Whether run `key` is read from the store (else from its journal record `rec`)."""
    if key not in f["runs"]:
        return False
    try:
        status = _text(f["runs"][key].attrs["status"])
    except Exception as exc:   # noqa: BLE001
        raise _damaged(path, key, exc) from None
    return rec is None or not _supersedes(status, rec["status"])


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
    return _arrays(rec)


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
    return _histograms_of(rec)


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
