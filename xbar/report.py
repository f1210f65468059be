"""Figures and tables from a sweep store (`xbar report`).

What is drawn follows what the spec swept (the grid keys stored with the file):

- accuracy vs bits (or vs the first numeric swept key), one line per rule (else update, else
  network), panels range x quant where those were swept — the seed study's figures; one figure per
  combination of the remaining swept keys (network, dataset, ...); mean and min-max over seeds;
- accuracy vs each swept device parameter (`device.<field>` grid keys), e.g. read noise, with a
  table of the same numbers;
- per-epoch test-accuracy curves of every group;
- final conductance histograms per layer of the best run of every line;
- pivot tables (Markdown and CSV) like the seed study's Tables 6.1/6.2: rows network x rule,
  columns bits, one table per dataset x range x quant.

Every title names the network, dataset and device where one figure holds one of each; accuracy
axes show chance level (100 / classes); swept values spanning two decades or more get a log axis;
pruning plots start each line at the unpruned network. Runs still in the store's journal (a sweep
running, or killed before its merge) are included.

The output folder keeps a list of what the report wrote (`.xbar-report.json`): the next report
into it replaces exactly those files, and never touches others.

`compare(A, B)` sets two stores side by side: runs matched by their resolved config.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from . import store
from .errors import ConfigError, XbarError

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


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise XbarError("xbar report needs matplotlib: pip install matplotlib") from None
    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "all"


# ---- the output folder ---------------------------------------------------------------------------

class _Out:
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

def _plan(df, swept: list[str]) -> dict[str, Any]:
    """Which swept key goes on x, on lines, on panels, and which split figures."""
    numeric = [k for k in swept if k in df.columns and k != "seed" and not k.startswith("device.")
               and df[k].dropna().map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all()
               and df[k].nunique() > 1]
    x = "bits" if "bits" in numeric else (numeric[0] if numeric else None)
    line = next((k for k in LINE_KEYS if k in swept and k != x), None)
    panels = [k for k in PANEL_KEYS if k in swept and k not in (x, line)]
    rest = [k for k in swept if k not in (x, line, "seed", *panels) and not k.startswith("device.")]
    return {"x": x, "line": line, "panels": panels, "figures": rest, "swept": swept}


def _groups(df, keys: list[str]):
    if not keys:
        yield {}, df
        return
    for values, sub in df.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield dict(zip(keys, values)), sub


def _name(sel: dict[str, Any]) -> str:
    """The part of a file name that tells figures apart."""
    return ", ".join(f"{k}={v}" for k, v in sel.items()) or "all runs"


def _title(sel: dict[str, Any], sub=None) -> str:
    """sel, then the network, dataset and device the figure's runs share."""
    items = dict(sel)
    if sub is not None:
        for k in CONTEXT_KEYS:
            if k in sub.columns and k not in items:
                vals = sub[k].dropna().unique()
                if len(vals) == 1:
                    items[k] = vals[0]
    return ", ".join(f"{k}={v}" for k, v in items.items()) or "all runs"


def _labels(rows, keys: list[str | None], more: list[str]) -> list[str]:
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


def _xscale(ax, values) -> None:
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


def _chance(ax, sub) -> None:
    """A dashed line at chance accuracy (100 / classes) of each dataset in the figure."""
    from . import data as xdata
    levels = set()
    for ds in (sub["dataset"].dropna().unique() if "dataset" in sub.columns else []):
        with contextlib.suppress(Exception):
            levels.add(100.0 / xdata.num_classes(str(ds)))
    for y in sorted(levels):
        ax.axhline(y, color="0.5", ls="--", lw=0.8, label=f"chance ({y:g} %)")


def _unpruned(sub, x: str):
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


# ---- the report ----------------------------------------------------------------------------------

def report(path: str, out: str) -> list[str]:
    """Write figures (PNG) and tables (Markdown, CSV) for store `path` into folder `out`."""
    if not Path(path).is_file():
        raise store.StoreError(f"{path}: no such store file")
    dest = _Out(out, "report")
    try:
        plt = _plt()
        store.verify(path)
        df = store.load(path)
        if not len(df):
            raise XbarError(f"{path}: the store holds no runs yet")
        meta = store.info(path)
        in_journal = len(set(df["key"]) - set(meta["runs"]))
        swept = list(meta["spec"].get("grid", {}))
        outdir = dest.stage
        plan = _plan(df, swept)
        ok = df[df["status"] == "ok"]
        written: list[str] = []

        # runs table (everything, one row per run)
        df.to_csv(outdir / "runs.csv", index=False)
        written.append("runs.csv")

        if plan["x"] is not None and len(ok):
            written += _accuracy_vs_x(plt, ok, plan, outdir)
            written += _pivot_tables(ok, plan, outdir)
        for k in (k for k in swept if k.startswith("device.")):
            written += _accuracy_vs_device(plt, ok, k, plan, outdir)
            written += _device_table(ok, k, plan, outdir)
        for k in RESULT_X:
            if k in ok.columns and k not in swept and ok[k].notna().any():
                written += _accuracy_vs_device(plt, ok, k, plan, outdir, split_x=False)
        written += _curves(plt, path, ok, plan, outdir)
        written += _histograms(plt, path, ok, plan, outdir)
        _readme(path, df, ok, swept, in_journal, written, outdir)
        return dest.commit()
    finally:
        dest.discard()


def _readme(path, df, ok, swept, in_journal: int, written: list[str], outdir: Path) -> None:
    counts = df["status"].value_counts()
    parts = [f"{counts.get(s, 0)} {s}" for s in store.STATUSES if counts.get(s, 0)]
    lines = [f"# Report of {Path(path).name}", "", f"{len(df)} runs: {', '.join(parts)}."]
    if in_journal:
        lines.append(f"{in_journal} of them are still in the journal ({Path(path).name}.journal/: the sweep is "
                     "running, or was stopped before storing them; running it again stores them).")
    lines += [f"Swept: {', '.join(swept)}.", ""]
    failed = df[df["status"] != "ok"]
    if len(failed):
        lines += ["## Runs that did not finish", "", "| key | status | epoch | message |", "|---|---|---|---|"]
        import pandas as pd
        for r in failed.to_dict("records"):
            de = r.get("diverged_epoch")
            epoch = "" if de is None or pd.isna(de) else str(int(de))
            msg = str(r.get("message", ""))[:120].replace("|", "/")
            lines.append(f"| {r['key']} | {r['status']} | {epoch} | {msg} |")
        lines.append("")
    lines += ["## Files", ""] + [f"- {Path(w).name}" for w in written]
    (outdir / "README.md").write_text("\n".join(lines) + "\n")


def _agg(sub, x: str):
    g = sub.groupby(x)[METRIC]
    return g.mean(), g.min(), g.max()


def _plot_line(ax, lsub, x: str, label: str) -> None:
    mean, lo, hi = _agg(lsub, x)
    xs, ys = list(mean.index), list(mean.values)
    start = _unpruned(lsub, x)
    if start is not None:
        xs, ys = [start[0], *xs], [start[1], *ys]
        order = np.argsort(xs, kind="stable")
        xs, ys = [xs[i] for i in order], [ys[i] for i in order]
    ax.plot(xs, ys, marker="o", ms=3, label=label)
    if len(hi) and (hi - lo).max() > 0:
        ax.fill_between(mean.index, lo.values, hi.values, alpha=0.15)


def _mark_unpruned(ax, sub, x: str) -> None:
    start = _unpruned(sub, x)
    if start is not None:
        ax.scatter([start[0]], [start[1]], marker="*", s=80, color="k", zorder=5,
                   label=f"unpruned ({start[1]:.1f} %)")


def _accuracy_vs_x(plt, ok, plan, outdir: Path) -> list[str]:
    x, line, panels = plan["x"], plan["line"], plan["panels"]
    written = []
    for sel, sub in _groups(ok, plan["figures"]):
        pvals = [sorted(sub[p].dropna().unique()) for p in panels]
        rows = pvals[0] if panels else [None]
        cols = pvals[1] if len(panels) > 1 else [None]
        fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.2 * len(cols), 3.2 * len(rows)),
                                 squeeze=False, sharex=True, sharey=True)
        for i, rv in enumerate(rows):
            for j, cv in enumerate(cols):
                ax = axes[i][j]
                part = sub
                if rv is not None:
                    part = part[part[panels[0]] == rv]
                if cv is not None:
                    part = part[part[panels[1]] == cv]
                for lv, lsub in _groups(part, [line] if line else []):
                    _plot_line(ax, lsub, x, str(lv.get(line, "")) if line else METRIC)
                start = _unpruned(part, x)
                _mark_unpruned(ax, part, x)
                _chance(ax, part)
                xs = sorted(set(part[x].dropna()) | ({start[0]} if start else set()))
                if 0 < len(xs) <= 12:
                    ax.set_xticks(xs)
                _xscale(ax, sub[x])
                ax.set_title(" / ".join(str(v) for v in (rv, cv) if v is not None), fontsize=9)
                ax.grid(alpha=0.3)
                if i == len(rows) - 1:
                    ax.set_xlabel(x)
                if j == 0:
                    ax.set_ylabel("test accuracy %")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(_title(sel, sub), fontsize=10)
        fig.tight_layout()
        name = f"accuracy_vs_{x}__{_slug(_name(sel))}.png"
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def _accuracy_vs_device(plt, ok, key: str, plan, outdir: Path, split_x: bool = True) -> list[str]:
    """Accuracy vs `key` (a swept device parameter, or a result such as tiles), a line per plan line."""
    if key not in ok.columns:
        return []
    line = plan["line"]
    written = []
    for sel, sub in _groups(ok, _others(plan, key, split_x)):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for lv, lsub in _groups(sub, [line] if line else []):
            _plot_line(ax, lsub, key, str(lv.get(line, METRIC)))
        _mark_unpruned(ax, sub, key)
        _chance(ax, sub)
        _xscale(ax, sub[key])
        ax.set_xlabel(key)
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(_title(sel, sub), fontsize=9)
        fig.tight_layout()
        name = f"accuracy_vs_{_slug(key)}__{_slug(_name(sel))}.png"
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def _others(plan, key: str, split_x: bool = True) -> list[str]:
    """The keys that split figures (and tables) of accuracy vs `key`."""
    return [k for k in plan["figures"] + ([plan["x"]] if plan["x"] and split_x else [])
            + [k for k in plan["swept"] if k.startswith("device.")] if k != key]


def _device_table(ok, key: str, plan, outdir: Path) -> list[str]:
    """Mean accuracy (over seeds) against a swept device parameter: rows network x line, columns
    its values; one section per combination of the other swept keys."""
    if key not in ok.columns or not len(ok):
        return []
    index = [k for k in ("network", plan["line"]) if k and k in ok.columns and k != key]
    index = list(dict.fromkeys(index)) or ["dataset"]
    split = [k for k in ("dataset", *_others(plan, key)) if k in ok.columns and k not in index and k != key]
    split = list(dict.fromkeys(split))
    md = [f"# Final test accuracy (%) against {key}, mean over seeds", ""]
    frames = []
    for sel, sub in _groups(ok, split):
        table = sub.pivot_table(index=index, columns=key, values=METRIC, aggfunc="mean")
        md += [f"## {_title(sel, sub)}", "", _markdown(table), ""]
        t = table.reset_index()
        for k, v in reversed(list(sel.items())):
            t.insert(0, k, v)
        frames.append(t)
    import pandas as pd
    base = f"table_accuracy_vs_{_slug(key)}"
    (outdir / f"{base}.md").write_text("\n".join(md))
    pd.concat(frames).to_csv(outdir / f"{base}.csv", index=False)
    return [f"{base}.md", f"{base}.csv"]


def _pivot_tables(ok, plan, outdir: Path) -> list[str]:
    x = plan["x"]
    index = [k for k in ("network", plan["line"]) if k and k in ok.columns and k != x]
    index = list(dict.fromkeys(index)) or [plan["line"] or "key"]
    split = [k for k in ("dataset", *plan["panels"]) if k in ok.columns and k not in index]
    md = ["# Final test accuracy (%), mean over seeds", ""]
    frames = []
    for sel, sub in _groups(ok, split):
        table = sub.pivot_table(index=index, columns=x, values=METRIC, aggfunc="mean")
        md += [f"## {_title(sel, sub)}", "", _markdown(table), ""]
        t = table.reset_index()
        for k, v in sel.items():
            t.insert(0, k, v)
        frames.append(t)
    (outdir / "table_accuracy.md").write_text("\n".join(md))
    import pandas as pd
    pd.concat(frames).to_csv(outdir / "table_accuracy.csv", index=False)
    return ["table_accuracy.md", "table_accuracy.csv"]


def _markdown(table) -> str:
    idx_names = [str(n) for n in table.index.names]
    cols = [str(c) for c in table.columns]
    out = ["| " + " | ".join(idx_names + cols) + " |", "|" + "---|" * (len(idx_names) + len(cols))]
    for idx, row in table.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        cells = [f"{v:.2f}" if np.isfinite(v) else "" for v in row.values]
        out.append("| " + " | ".join([str(i) for i in idx] + cells) + " |")
    return "\n".join(out)


def _curves(plt, path, ok, plan, outdir: Path) -> list[str]:
    written = []
    keys = plan["figures"] + plan["panels"]
    for sel, sub in _groups(ok, keys):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        shown = sub.sort_values(METRIC, ascending=False).head(12)
        more = ["seed", *(k for k in plan["swept"] if k not in keys)]
        for (_, r), label in zip(shown.iterrows(), _labels(shown, [plan["line"], plan["x"]], more)):
            h = store.history(path, r["key"])
            ax.plot(h["epoch"], h["test_accuracy"], lw=1, label=label, marker="o" if len(h["epoch"]) < 3 else None,
                    ms=3)
        _chance(ax, sub)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        ax.set_title(f"{_title(sel, sub)} (best {len(shown)} of {len(sub)})", fontsize=9)
        fig.tight_layout()
        name = f"curves__{_slug(_name(sel))}.png"
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def _histograms(plt, path, ok, plan, outdir: Path) -> list[str]:
    written = []
    line = plan["line"]
    best = ok.sort_values(METRIC, ascending=False).groupby(line).head(1) if line else ok.nlargest(1, METRIC)
    for idx, r in best.iterrows():
        hists = store.histograms(path, r["key"])
        if not hists:
            continue
        fig, axes = plt.subplots(1, len(hists), figsize=(3.2 * len(hists), 2.8), squeeze=False)
        for i, (counts, edges) in enumerate(hists):
            ax = axes[0][i]
            ax.stairs(counts, edges, fill=True, alpha=0.7)
            ax.set_yscale("log")
            ax.set_xlabel("G (µS)")
            ax.set_ylabel("devices")
            ax.set_title(f"layer {i + 1}", fontsize=9)
        label = f"{line}={r[line]}" if line else r["key"]
        context = _title({}, best.loc[[idx]])
        fig.suptitle(f"final conductances, best run of {label} ({r[METRIC]:.2f} %)\n{context}", fontsize=9)
        fig.tight_layout()
        name = f"conductances__{_slug(label)}.png"
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def compare(path_a: str, path_b: str, out: str) -> list[str]:
    """Two stores side by side: runs matched by resolved config (minus seed-independent paths)."""
    for p in (path_a, path_b):
        if not Path(p).is_file():
            raise store.StoreError(f"{p}: no such store file")
    dest = _Out(out, "compare")
    try:
        plt = _plt()
        for p in (path_a, path_b):
            store.verify(p)
        _compare(plt, path_a, path_b, dest.stage)
        return dest.commit()
    finally:
        dest.discard()


def _compare(plt, path_a: str, path_b: str, outdir: Path) -> None:
    a, b = store.load(path_a), store.load(path_b)
    cfg_cols = [c for c in a.columns if c in b.columns and c not in
                ("key", "status", "message", "test_accuracy", "train_accuracy", "wall_seconds", "train_seconds",
                 "finished", "xbar_version", "data_dir", "diverged_epoch")]
    va = a[a["status"] == "ok"]
    vb = b[b["status"] == "ok"]

    def norm(frame):
        f = frame[cfg_cols + [METRIC, "wall_seconds"]].copy()
        f["_match"] = f[cfg_cols].apply(lambda r: json.dumps([str(v) for v in r.values]), axis=1)
        return f

    m = norm(va).merge(norm(vb)[["_match", METRIC, "wall_seconds"]], on="_match", suffixes=("_a", "_b"))
    if not len(m):
        raise XbarError(f"{path_a} and {path_b} have no run with the same configuration to compare")
    m["difference"] = m[f"{METRIC}_b"] - m[f"{METRIC}_a"]
    varying = [c for c in cfg_cols if m[c].astype(str).nunique() > 1]
    table = m[varying + [f"{METRIC}_a", f"{METRIC}_b", "difference", "wall_seconds_a", "wall_seconds_b"]]
    table.to_csv(outdir / "compare.csv", index=False)
    lines = [f"# {Path(path_a).name} (A) vs {Path(path_b).name} (B)", "",
             (f"{len(m)} matching runs; mean difference B - A: {m['difference'].mean():+.2f} points "
              f"(max |diff| {m['difference'].abs().max():.2f})."), "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
    (outdir / "compare.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(m[f"{METRIC}_a"], m[f"{METRIC}_b"], s=10)
    lo = float(min(m[f"{METRIC}_a"].min(), m[f"{METRIC}_b"].min()))
    ax.plot([lo, 100], [lo, 100], "k--", lw=0.8)
    ax.set_xlabel(f"A: {Path(path_a).name}")
    ax.set_ylabel(f"B: {Path(path_b).name}")
    ax.set_title("final test accuracy %", fontsize=9)
    fig.tight_layout()
    fig.savefig(outdir / "compare.png", dpi=110)
    plt.close(fig)
