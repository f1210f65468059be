"""Run keys and the journal: finished runs as atomic JSON files beside the store, checked before
they are merged; leftovers of killed writers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import XbarError
from ..jsonio import json_default

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
                    "adc_offset_lsb": 0.0, "adc_gain_rel": 0.0, "adc_inl_lsb": 0.0, "init": None,
                    "hwa_age_min_s": 3600.0, "hwa_age_max_s": 3.1536e7, "hwa_clip_sigma": 0.0,
                    "eval_at_s": None, "eval_compensate": "exact", "insitu_pairs": "split",
                    "adc_calibrate_steps": None, "insitu_feedback": None, "insitu_threshold": 1.0,
                    "replicas": 1}
# Checksummed object headers (superblock v3, object header v2) need HDF5 >= 1.10 to read.
LIBVER = ("v110", "latest")
KEY_PATTERN = re.compile(r"[0-9a-f]{16}")
BAD_DIR = "bad"

Warn = Callable[[str], None]


class StoreError(XbarError):
    """A store file that cannot be used (unreadable, damaged, another spec, another format)."""


def h5py_module():
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


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(v) -> bool:
    return isinstance(v, list) and all(x is None or is_number(x) for x in v)


def check_record(rec: Any, key: str | None = None) -> str:
    """Why a journal record cannot be stored under `key` ('' when it can)."""
    if not isinstance(rec, dict) or not rec:
        return "empty, or not a run record"
    k = rec.get("key")
    if not isinstance(k, str) or not KEY_PATTERN.fullmatch(k):
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
        if rec.get(f) is not None and not is_number(rec[f]):
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
        bad = next((h for h in HISTORY_KEYS if e.get(h) is not None and not is_number(e[h])), None)
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
        rec, why = read_entry(e)
        if why is None:
            out[e.stem] = rec
        elif why:   # "" = the entry was merged (and removed) while we read
            bad_entry(e, why, quarantine, warn)
    return out


def read_entry(e: Path) -> tuple[dict | None, str | None]:
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


def bad_entry(e: Path, why: str, quarantine: bool, warn: Warn | None) -> None:
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


def supersedes(stored_status: str | None, new_status: str) -> bool:
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


def run_arrays(rec: dict[str, Any]) -> dict[str, np.ndarray]:
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


def histograms_of(rec: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(h["counts"], dtype=np.int64), np.asarray(h["edges"], dtype=np.float64))
            for h in rec.get("histograms") or []]


DIGEST_ATTR = "attrs_sha256"


def attrs_digest(attrs) -> str:
    """SHA-256 over a run group's attributes (all but the digest itself), as they read back.

    HDF5 checksums object headers, but a group with many attributes keeps them in dense storage,
    whose heap blocks carry no checksum: without this digest a flipped bit in, say, a stored
    accuracy or timestamp would read back as a different value, unnoticed.
    """
    h = hashlib.sha256()
    for k in sorted(attrs):
        if k == DIGEST_ATTR:
            continue
        v = attrs[k]
        v = v.decode() if isinstance(v, bytes) else v
        v = v.item() if isinstance(v, np.generic) else v
        h.update(f"{k}\0{type(v).__name__}\0{v!r}\0".encode())
    return h.hexdigest()
