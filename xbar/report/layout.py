"""The report's output folder (staged, with a manifest of what it wrote) and its plan: which
swept key goes on x, on lines and panels, titles and labels."""


import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..errors import ConfigError, XbarError

LINE_KEYS = ("method", "rule", "update", "network", "device", "optimizer")
RESULT_X = ("tiles", "energy_pj")   # result columns worth an accuracy-vs plot (pruning sweeps)
PANEL_KEYS = ("range", "quant")
CONTEXT_KEYS = ("network", "dataset", "device")   # named in every title where a figure has one
METRIC = "test_accuracy"
LOG_DECADES = 2.0   # swept values spanning this many decades (or more) get a log axis
# Where the unpruned network sits on each x of a pruning plot: a value, or the column holding it.
UNPRUNED_X = {"sparsity": 0.0, "budget": 1.0, "tiles": "tiles_before", "energy_pj": "energy_pj_before"}
MANIFEST = ".xbar-report.json"
# Names this module writes; a file of such a name that no report wrote is never overwritten.
OWN_NAMES = {
    "report": re.compile(r"(README\.md|runs\.csv|table_[^/]*\.(md|csv)|(accuracy_vs_|curves__|conductances__)[^/]*\.png)"),
    "compare": re.compile(r"compare\.(csv|md|png)"),
}


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise XbarError("xbar report needs matplotlib: pip install matplotlib") from None
    return plt


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "all"


# ---- the output folder ---------------------------------------------------------------------------

class OutputFolder:
    """An output folder written as a whole: files are made in a staging folder inside it, then
    moved in; files of the previous report of the same kind that this one does not write again
    are removed; files the reports did not write are never touched."""

    def __init__(self, out: str | os.PathLike, kind: str):
        self.dir, self.kind = Path(out), kind
        self.created = not self.dir.exists()
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"--out {self.dir}: is a file, expected a folder; choose another --out")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._clear_stale_staging()
            self.stage = self.dir / f".xbar-{kind}.{os.getpid()}.tmp"
            self.stage.mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {self.dir}: cannot write there ({exc.strerror or exc}); choose another "
                              "folder with --out") from None
        self.manifest = self._read_manifest()
        claimed = {n for names in self.manifest.values() for n in names}
        foreign = sorted(p.name for p in self.dir.iterdir()
                         if p.is_file() and OWN_NAMES[kind].fullmatch(p.name) and p.name not in claimed)
        if foreign:
            self.discard()
            raise ConfigError(f"--out {self.dir}: it holds {foreign[0]}, which no xbar report wrote, and the "
                              "report would overwrite it; choose a new or empty folder with --out")

    def _clear_stale_staging(self) -> None:
        for p in self.dir.glob(".xbar-*.tmp"):
            m = re.fullmatch(r"\.xbar-(report|compare)\.(\d+)\.tmp", p.name)
            if m and p.is_dir() and not p.is_symlink() and not store.writer_alive(int(m[2])):
                shutil.rmtree(p, ignore_errors=True)

    def _read_manifest(self) -> dict[str, list[str]]:
        f = self.dir / MANIFEST
        with contextlib.suppress(OSError, ValueError, AttributeError):
            data = json.loads(f.read_text())
            return {k: [n for n in v if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")]
                    for k, v in data.items() if k in OWN_NAMES and isinstance(v, list)}
        return self._legacy()

    def _legacy(self) -> dict[str, list[str]]:
        """What a report written before the manifest existed wrote (its README lists it)."""
        out: dict[str, list[str]] = {}
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = (self.dir / "README.md").read_text(encoding="utf-8")
            if text.startswith("# Report of ") and "\n## Files\n" in text:
                names = re.findall(r"^- (\S+)$", text.split("\n## Files\n", 1)[1], flags=re.MULTILINE)
                out["report"] = [n for n in names if OWN_NAMES["report"].fullmatch(n)] + ["README.md"]
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if " (A) vs " in (self.dir / "compare.md").read_text(encoding="utf-8").splitlines()[0]:
                out["compare"] = ["compare.csv", "compare.md", "compare.png"]
        return out

    def _write_manifest(self, manifest: dict[str, list[str]]) -> None:
        tmp = self.dir / f"{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.dir / MANIFEST)

    def commit(self) -> list[str]:
        """Move the staged files in, remove the previous report's leftovers; returns the paths."""
        new = sorted(p.name for p in self.stage.iterdir() if p.is_file())
        old = self.manifest.get(self.kind, [])
        # A kill at any point below leaves a manifest that covers every file of either report.
        self._write_manifest(self.manifest | {self.kind: sorted(set(old) | set(new))})
        for n in new:
            os.replace(self.stage / n, self.dir / n)
        for n in sorted(set(old) - set(new)):
            p = self.dir / n
            if OWN_NAMES[self.kind].fullmatch(n) and p.is_file() and not p.is_symlink():
                p.unlink()
        self._write_manifest(self.manifest | {self.kind: new})
        self.discard()
        return [str(self.dir / n) for n in new]

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
        if self.created:   # a folder this report made and then wrote nothing into
            with contextlib.suppress(OSError):
                self.dir.rmdir()


# ---- planning ------------------------------------------------------------------------------------

def plan_axes(df, swept: list[str]) -> dict[str, Any]:
    """Which swept key goes on x, on lines, on panels, and which split figures."""
    numeric = [k for k in swept if k in df.columns and k != "seed" and not k.startswith("device.")
               and df[k].dropna().map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all()
               and df[k].nunique() > 1]
    x = "bits" if "bits" in numeric else (numeric[0] if numeric else None)
    line = next((k for k in LINE_KEYS if k in swept and k != x), None)
    panels = [k for k in PANEL_KEYS if k in swept and k not in (x, line)]
    rest = [k for k in swept if k not in (x, line, "seed", *panels) and not k.startswith("device.")]
    return {"x": x, "line": line, "panels": panels, "figures": rest, "swept": swept}


def grouped(df, keys: list[str]):
    if not keys:
        yield {}, df
        return
    for values, sub in df.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield dict(zip(keys, values)), sub


def selection_name(sel: dict[str, Any]) -> str:
    """The part of a file name that tells figures apart."""
    return ", ".join(f"{k}={v}" for k, v in sel.items()) or "all runs"


def title_for(sel: dict[str, Any], sub=None) -> str:
    """sel, then the network, dataset and device the figure's runs share."""
    items = dict(sel)
    if sub is not None:
        for k in CONTEXT_KEYS:
            if k in sub.columns and k not in items:
                vals = sub[k].dropna().unique()
                if len(vals) == 1:
                    items[k] = vals[0]
    return ", ".join(f"{k}={v}" for k, v in items.items()) or "all runs"


def line_labels(rows, keys: list[str | None], more: list[str]) -> list[str]:
    """One legend label per row from `keys`, adding keys of `more` (then the run key) until unique."""
    keys = [k for k in dict.fromkeys(keys) if k and k in rows.columns]
    extra = [k for k in more if k in rows.columns and k not in keys and rows[k].astype(str).nunique() > 1]

    def make(ks):
        return [" ".join(f"{k}={r[k]}" for k in ks) or str(r["key"]) for _, r in rows.iterrows()]

    labels = make(keys)
    for k in extra:
        if len(set(labels)) == len(labels):
            break
        keys.append(k)
        labels = make(keys)
    if len(set(labels)) != len(labels):
        labels = [f"{lab} ({r['key'][:6]})" for lab, (_, r) in zip(labels, rows.iterrows())]
    return labels


def xscale(ax, values) -> None:
    """A log axis for values spanning LOG_DECADES or more (symlog when 0 is among them)."""
    xs = sorted({float(v) for v in values if v is not None and np.isfinite(float(v))})
    pos = [v for v in xs if v > 0]
    if len(pos) < 2 or np.log10(pos[-1] / pos[0]) < LOG_DECADES or any(v < 0 for v in xs):
        return
    if xs[0] == 0:
        ax.set_xscale("symlog", linthresh=pos[0])
    else:
        ax.set_xscale("log")
    if len(xs) <= 12:
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.minorticks_off()


def chance(ax, sub) -> None:
    """A dashed line at chance accuracy (100 / classes) of each dataset in the figure."""
    from .. import data as xdata
    levels = set()
    for ds in (sub["dataset"].dropna().unique() if "dataset" in sub.columns else []):
        with contextlib.suppress(Exception):
            levels.add(100.0 / xdata.num_classes(str(ds)))
    for y in sorted(levels):
        ax.axhline(y, color="0.5", ls="--", lw=0.8, label=f"chance ({y:g} %)")


def unpruned(sub, x: str):
    """(x, accuracy) of the network before pruning, or None for runs that are not pruning runs."""
    if x not in UNPRUNED_X or "accuracy_before" not in sub.columns or not sub["accuracy_before"].notna().any():
        return None
    where = UNPRUNED_X[x]
    if isinstance(where, str):
        if where not in sub.columns or not sub[where].notna().any():
            return None
        x0 = float(sub[where].mean())
    else:
        x0 = where
    return x0, float(sub["accuracy_before"].mean())


def save_figure(plt, fig, outdir: Path, name: str) -> str:
    """Lay out, write (PNG, 110 dpi) and close `fig` as outdir/name; returns name."""
    fig.tight_layout()
    fig.savefig(outdir / name, dpi=110)
    plt.close(fig)
    return name


def accuracy_axes(ax, xlabel: str, title: str) -> None:
    """The labels, grid, legend and title of a single accuracy figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
