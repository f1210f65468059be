"""Figures and tables from a sweep store (`xbar report`).

What is drawn follows what the spec swept (the grid keys stored with the file):

- accuracy vs bits (or vs the first numeric swept key), one line per rule (else update, else
  network), panels range x quant where those were swept — the seed study's figures; one figure per
  combination of the remaining swept keys (network, dataset, ...); mean and min-max over seeds;
- accuracy vs each swept device parameter (`device.<field>` grid keys), e.g. read noise;
- per-epoch test-accuracy curves of every group;
- final conductance histograms per layer of the best run of every line;
- pivot tables (Markdown and CSV) like the seed study's Tables 6.1/6.2: rows network x rule,
  columns bits, one table per dataset x range x quant.

`compare(A, B)` sets two stores side by side: runs matched by their resolved config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from . import store
from .errors import XbarError

LINE_KEYS = ("method", "rule", "update", "network", "device", "optimizer")
RESULT_X = ("tiles", "energy_pj")   # result columns worth an accuracy-vs plot (pruning sweeps)
PANEL_KEYS = ("range", "quant")
METRIC = "test_accuracy"


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


def _swept(path) -> list[str]:
    grid = store.info(path)["spec"].get("grid", {})
    return list(grid)


def _column(key: str) -> str:
    return key   # device.<field> keys are stored under their spec name in the point


def _plan(df, swept: list[str]) -> dict[str, Any]:
    """Which swept key goes on x, on lines, on panels, and which split figures."""
    numeric = [k for k in swept if k in df.columns and k != "seed" and not k.startswith("device.")
               and df[k].dropna().map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all()
               and df[k].nunique() > 1]
    x = "bits" if "bits" in numeric else (numeric[0] if numeric else None)
    line = next((k for k in LINE_KEYS if k in swept and k != x), None)
    panels = [k for k in PANEL_KEYS if k in swept and k not in (x, line)]
    rest = [k for k in swept if k not in (x, line, "seed", *panels) and not k.startswith("device.")]
    return {"x": x, "line": line, "panels": panels, "figures": rest}


def _groups(df, keys: list[str]):
    if not keys:
        yield {}, df
        return
    for values, sub in df.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield dict(zip(keys, values)), sub


def _title(sel: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sel.items()) or "all runs"


def report(path: str, out: str) -> list[str]:
    """Write figures (PNG) and tables (Markdown, CSV) for store `path` into folder `out`."""
    plt = _plt()
    df = store.load(path)
    if not len(df):
        raise XbarError(f"{path}: the store holds no runs yet")
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    swept = _swept(path)
    plan = _plan(df, swept)
    ok = df[df["status"] == "ok"]
    written: list[str] = []

    # runs table (everything, one row per run)
    runs_csv = outdir / "runs.csv"
    df.to_csv(runs_csv, index=False)
    written.append(str(runs_csv))

    if plan["x"] is not None and len(ok):
        written += _accuracy_vs_x(plt, ok, plan, outdir)
        written += _pivot_tables(ok, plan, outdir)
    for k in (k for k in swept if k.startswith("device.")):
        written += _accuracy_vs_device(plt, ok, k, plan, outdir)
    for k in RESULT_X:
        if k in ok.columns and k not in swept and ok[k].notna().any():
            written += _accuracy_vs_device(plt, ok, k, plan, outdir, split_x=False)
    written += _curves(plt, path, ok, plan, outdir)
    written += _histograms(plt, path, ok, plan, outdir)
    summary = outdir / "README.md"
    failed = df[df["status"] != "ok"]
    lines = [f"# Report of {Path(path).name}", "", f"{len(df)} runs: {len(ok)} ok, {len(failed)} failed or diverged.",
             f"Swept: {', '.join(swept)}.", ""]
    if len(failed):
        lines += ["## Runs that did not finish", "", "| key | status | message |", "|---|---|---|"]
        lines += [f"| {r.key} | {r.status} | {str(r.message)[:120]} |" for r in failed.itertuples()]
        lines.append("")
    lines += ["## Files", ""] + [f"- {Path(w).name}" for w in written]
    summary.write_text("\n".join(lines) + "\n")
    written.append(str(summary))
    return written


def _agg(sub, x: str):
    g = sub.groupby(x)[METRIC]
    return g.mean(), g.min(), g.max()


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
                    mean, lo, hi = _agg(lsub, x)
                    label = str(lv.get(line, "")) if line else METRIC
                    ax.plot(mean.index, mean.values, marker="o", ms=3, label=label)
                    if (hi - lo).max() > 0:
                        ax.fill_between(mean.index, lo.values, hi.values, alpha=0.15)
                xs = sorted(part[x].dropna().unique())
                if 0 < len(xs) <= 12:
                    ax.set_xticks(xs)
                ax.set_title(" / ".join(str(v) for v in (rv, cv) if v is not None), fontsize=9)
                ax.grid(alpha=0.3)
                if i == len(rows) - 1:
                    ax.set_xlabel(x)
                if j == 0:
                    ax.set_ylabel("test accuracy %")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(_title(sel), fontsize=10)
        fig.tight_layout()
        f = outdir / f"accuracy_vs_{x}__{_slug(_title(sel))}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        written.append(str(f))
    return written


def _accuracy_vs_device(plt, ok, key: str, plan, outdir: Path, split_x: bool = True) -> list[str]:
    """Accuracy vs `key` (a swept device parameter, or a result such as tiles), a line per plan line."""
    if key not in ok.columns:
        return []
    line = plan["line"]
    written = []
    others = [k for k in plan["figures"] + ([plan["x"]] if plan["x"] and split_x else []) if k != key]
    for sel, sub in _groups(ok, others):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for lv, lsub in _groups(sub, [line] if line else []):
            mean, lo, hi = _agg(lsub, key)
            ax.plot(mean.index, mean.values, marker="o", ms=3, label=str(lv.get(line, METRIC)))
            ax.fill_between(mean.index, lo.values, hi.values, alpha=0.15)
        ax.set_xlabel(key)
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(_title(sel), fontsize=9)
        fig.tight_layout()
        f = outdir / f"accuracy_vs_{_slug(key)}__{_slug(_title(sel))}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        written.append(str(f))
    return written


def _pivot_tables(ok, plan, outdir: Path) -> list[str]:
    x = plan["x"]
    index = [k for k in ("network", plan["line"]) if k and k in ok.columns and k != x]
    index = list(dict.fromkeys(index)) or [plan["line"] or "key"]
    split = [k for k in ("dataset", *plan["panels"]) if k in ok.columns and k not in index]
    written = []
    md = ["# Final test accuracy (%), mean over seeds", ""]
    frames = []
    for sel, sub in _groups(ok, split):
        table = sub.pivot_table(index=index, columns=x, values=METRIC, aggfunc="mean")
        md += [f"## {_title(sel)}", "", _markdown(table), ""]
        t = table.reset_index()
        for k, v in sel.items():
            t.insert(0, k, v)
        frames.append(t)
    f_md = outdir / "table_accuracy.md"
    f_md.write_text("\n".join(md))
    written.append(str(f_md))
    import pandas as pd
    f_csv = outdir / "table_accuracy.csv"
    pd.concat(frames).to_csv(f_csv, index=False)
    written.append(str(f_csv))
    return written


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
        for r in shown.itertuples():
            h = store.history(path, r.key)
            label = " ".join(f"{k}={getattr(r, k)}" for k in (plan["line"], plan["x"]) if k and hasattr(r, k))
            ax.plot(h["epoch"], h["test_accuracy"], lw=1, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        ax.set_title(f"{_title(sel)} (best {len(shown)} of {len(sub)})", fontsize=9)
        fig.tight_layout()
        f = outdir / f"curves__{_slug(_title(sel))}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        written.append(str(f))
    return written


def _histograms(plt, path, ok, plan, outdir: Path) -> list[str]:
    written = []
    line = plan["line"]
    best = ok.sort_values(METRIC, ascending=False).groupby(line).head(1) if line else ok.nlargest(1, METRIC)
    for r in best.itertuples():
        hists = store.histograms(path, r.key)
        if not hists:
            continue
        fig, axes = plt.subplots(1, len(hists), figsize=(3.2 * len(hists), 2.8), squeeze=False)
        for i, (counts, edges) in enumerate(hists):
            ax = axes[0][i]
            ax.stairs(counts, edges, fill=True, alpha=0.7)
            ax.set_yscale("log")
            ax.set_xlabel("G (µS)")
            ax.set_title(f"layer {i + 1}", fontsize=9)
        label = f"{line}={getattr(r, line)}" if line else r.key
        fig.suptitle(f"final conductances, best run of {label} ({getattr(r, METRIC):.2f} %)", fontsize=9)
        fig.tight_layout()
        f = outdir / f"conductances__{_slug(label)}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        written.append(str(f))
    return written


def compare(path_a: str, path_b: str, out: str) -> list[str]:
    """Two stores side by side: runs matched by resolved config (minus seed-independent paths)."""
    plt = _plt()
    a, b = store.load(path_a), store.load(path_b)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    cfg_cols = [c for c in a.columns if c in b.columns and c not in
                ("key", "status", "message", "test_accuracy", "train_accuracy", "wall_seconds", "train_seconds",
                 "finished", "xbar_version", "data_dir")]
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
    f_csv = outdir / "compare.csv"
    table.to_csv(f_csv, index=False)
    f_md = outdir / "compare.md"
    lines = [f"# {Path(path_a).name} (A) vs {Path(path_b).name} (B)", "",
             f"{len(m)} matching runs; mean difference B - A: {m['difference'].mean():+.2f} points "
             f"(max |diff| {m['difference'].abs().max():.2f}).", "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
    f_md.write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(m[f"{METRIC}_a"], m[f"{METRIC}_b"], s=10)
    lo = float(min(m[f"{METRIC}_a"].min(), m[f"{METRIC}_b"].min()))
    ax.plot([lo, 100], [lo, 100], "k--", lw=0.8)
    ax.set_xlabel(f"A: {Path(path_a).name}")
    ax.set_ylabel(f"B: {Path(path_b).name}")
    ax.set_title("final test accuracy %", fontsize=9)
    fig.tight_layout()
    f_png = outdir / "compare.png"
    fig.savefig(f_png, dpi=110)
    plt.close(fig)
    return [str(f_csv), str(f_md), str(f_png)]
