"""The report's figures: accuracy against the swept values, per-epoch curves, conductance
histograms."""


from pathlib import Path

import numpy as np

from .. import store
from .layout import (
    METRIC,
    accuracy_axes,
    chance,
    grouped,
    line_labels,
    save_figure,
    selection_name,
    slug,
    title_for,
    unpruned,
    xscale,
)


def _agg(sub, x: str):
    g = sub.groupby(x)[METRIC]
    return g.mean(), g.min(), g.max()


def _plot_line(ax, lsub, x: str, label: str) -> None:
    mean, lo, hi = _agg(lsub, x)
    xs, ys = list(mean.index), list(mean.values)
    start = unpruned(lsub, x)
    if start is not None:
        xs, ys = [start[0], *xs], [start[1], *ys]
        order = np.argsort(xs, kind="stable")
        xs, ys = [xs[i] for i in order], [ys[i] for i in order]
    ax.plot(xs, ys, marker="o", ms=3, label=label)
    if len(hi) and (hi - lo).max() > 0:
        ax.fill_between(mean.index, lo.values, hi.values, alpha=0.15)


def _mark_unpruned(ax, sub, x: str) -> None:
    start = unpruned(sub, x)
    if start is not None:
        ax.scatter([start[0]], [start[1]], marker="*", s=80, color="k", zorder=5,
                   label=f"unpruned ({start[1]:.1f} %)")


def accuracy_vs_x(plt, ok, plan, outdir: Path) -> list[str]:
    x, line, panels = plan["x"], plan["line"], plan["panels"]
    written = []
    for sel, sub in grouped(ok, plan["figures"]):
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
                for lv, lsub in grouped(part, [line] if line else []):
                    _plot_line(ax, lsub, x, str(lv.get(line, "")) if line else METRIC)
                start = unpruned(part, x)
                _mark_unpruned(ax, part, x)
                chance(ax, part)
                xs = sorted(set(part[x].dropna()) | ({start[0]} if start else set()))
                if 0 < len(xs) <= 12:
                    ax.set_xticks(xs)
                xscale(ax, sub[x])
                ax.set_title(" / ".join(str(v) for v in (rv, cv) if v is not None), fontsize=9)
                ax.grid(alpha=0.3)
                if i == len(rows) - 1:
                    ax.set_xlabel(x)
                if j == 0:
                    ax.set_ylabel("test accuracy %")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(title_for(sel, sub), fontsize=10)
        name = f"accuracy_vs_{x}__{slug(selection_name(sel))}.png"
        written.append(save_figure(plt, fig, outdir, name))
    return written


def accuracy_vs_device(plt, ok, key: str, plan, outdir: Path, split_x: bool = True) -> list[str]:
    """Accuracy vs `key` (a swept device parameter, or a result such as tiles), a line per plan line."""
    if key not in ok.columns:
        return []
    line = plan["line"]
    written = []
    for sel, sub in grouped(ok, others(plan, key, split_x)):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for lv, lsub in grouped(sub, [line] if line else []):
            _plot_line(ax, lsub, key, str(lv.get(line, METRIC)))
        _mark_unpruned(ax, sub, key)
        chance(ax, sub)
        xscale(ax, sub[key])
        accuracy_axes(ax, key, title_for(sel, sub))
        name = f"accuracy_vs_{slug(key)}__{slug(selection_name(sel))}.png"
        written.append(save_figure(plt, fig, outdir, name))
    return written


def others(plan, key: str, split_x: bool = True) -> list[str]:
    """The keys that split figures (and tables) of accuracy vs `key`."""
    return [k for k in plan["figures"] + ([plan["x"]] if plan["x"] and split_x else [])
            + [k for k in plan["swept"] if k.startswith("device.")] if k != key]

def curves(plt, path, ok, plan, outdir: Path) -> list[str]:
    written = []
    keys = plan["figures"] + plan["panels"]
    for sel, sub in grouped(ok, keys):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        shown = sub.sort_values(METRIC, ascending=False).head(12)
        more = ["seed", *(k for k in plan["swept"] if k not in keys)]
        for (_, r), label in zip(shown.iterrows(), line_labels(shown, [plan["line"], plan["x"]], more)):
            h = store.history(path, r["key"])
            ax.plot(h["epoch"], h["test_accuracy"], lw=1, label=label, marker="o" if len(h["epoch"]) < 3 else None,
                    ms=3)
        chance(ax, sub)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        ax.set_title(f"{title_for(sel, sub)} (best {len(shown)} of {len(sub)})", fontsize=9)
        name = f"curves__{slug(selection_name(sel))}.png"
        written.append(save_figure(plt, fig, outdir, name))
    return written


def histograms(plt, path, ok, plan, outdir: Path) -> list[str]:
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
        context = title_for({}, best.loc[[idx]])
        fig.suptitle(f"final conductances, best run of {label} ({r[METRIC]:.2f} %)\n{context}", fontsize=9)
        name = f"conductances__{slug(label)}.png"
        written.append(save_figure(plt, fig, outdir, name))
    return written
