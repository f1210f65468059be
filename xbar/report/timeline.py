"""Accuracy against the time after programming, for runs trained with ``eval_at_s`` (their sweep
records carry the columns ``test_accuracy_at_<t>s``)."""

from __future__ import annotations

import re
from pathlib import Path

from ..config import human_time
from .layout import METRIC, accuracy_axes, chance, grouped, save_figure, selection_name, slug, title_for
from .tables import markdown

AT_COLUMN = re.compile(r"test_accuracy_at_(.+)s")


def accuracy_vs_time(plt, ok, plan, outdir: Path) -> list[str]:
    """Test accuracy against the time after programming: one line per (line, x) combination,
    averaged over seeds; a figure per combination of the other swept keys, and
    table_accuracy_vs_time.md/.csv (as programmed, then each time)."""
    cols = {c: float(m.group(1)) for c in ok.columns if (m := AT_COLUMN.fullmatch(str(c)))}
    cols = {c: t for c, t in sorted(cols.items(), key=lambda kv: kv[1]) if ok[c].notna().any()}
    if not cols:
        return []
    import pandas as pd
    keys = [k for k in (plan["line"], plan["x"]) if k]
    split = [k for k in plan["figures"] + plan["panels"] + [k for k in plan["swept"] if k.startswith("device.")]
             if k not in keys and k != "seed"]
    written, md, frames = [], ["# Test accuracy (%) against time after programming, mean over seeds", ""], []
    for sel, sub in grouped(ok, split):
        sub = sub[sub[list(cols)].notna().any(axis=1)]
        if not len(sub):
            continue
        table = sub.groupby(keys, dropna=False)[[METRIC, *cols]].mean() if keys else \
            sub[[METRIC, *cols]].mean().to_frame().T
        table.columns = ["as programmed"] + [human_time(t) for t in cols.values()]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, row in table.iterrows():
            name = label if isinstance(label, tuple) else (label,)
            ax.plot(list(cols.values()), row.values[1:], marker="o", ms=3,
                    label=" ".join(f"{k}={v}" for k, v in zip(keys, name)) or METRIC)
        chance(ax, sub)
        ax.set_xscale("log")
        ax.set_xticks(list(cols.values()), [human_time(t) for t in cols.values()])
        ax.minorticks_off()
        accuracy_axes(ax, "time after programming", title_for(sel, sub))
        name = f"accuracy_vs_time__{slug(selection_name(sel))}.png"
        written.append(save_figure(plt, fig, outdir, name))
        md += [f"## {title_for(sel, sub)}", "", markdown(table), ""]
        t = table.reset_index() if keys else table
        for k, v in reversed(list(sel.items())):
            t.insert(0, k, v)
        frames.append(t)
    if frames:
        (outdir / "table_accuracy_vs_time.md").write_text("\n".join(md))
        pd.concat(frames).to_csv(outdir / "table_accuracy_vs_time.csv", index=False)
        written += ["table_accuracy_vs_time.md", "table_accuracy_vs_time.csv"]
    return written
