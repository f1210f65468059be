"""The report's tables: accuracy pivoted like the seed study's, and accuracy against each swept
device field (Markdown and CSV)."""


from pathlib import Path

import numpy as np

from .figures import others
from .layout import METRIC, grouped, slug, title_for


def device_table(ok, key: str, plan, outdir: Path) -> list[str]:
    """Mean accuracy (over seeds) against a swept device parameter: rows network x line, columns
    its values; one section per combination of the other swept keys."""
    if key not in ok.columns or not len(ok):
        return []
    index = [k for k in ("network", plan["line"]) if k and k in ok.columns and k != key]
    index = list(dict.fromkeys(index)) or ["dataset"]
    split = [k for k in ("dataset", *others(plan, key)) if k in ok.columns and k not in index and k != key]
    split = list(dict.fromkeys(split))
    md = [f"# Final test accuracy (%) against {key}, mean over seeds", ""]
    frames = []
    for sel, sub in grouped(ok, split):
        table = sub.pivot_table(index=index, columns=key, values=METRIC, aggfunc="mean")
        md += [f"## {title_for(sel, sub)}", "", markdown(table), ""]
        t = table.reset_index()
        for k, v in reversed(list(sel.items())):
            t.insert(0, k, v)
        frames.append(t)
    import pandas as pd
    base = f"table_accuracy_vs_{slug(key)}"
    (outdir / f"{base}.md").write_text("\n".join(md))
    pd.concat(frames).to_csv(outdir / f"{base}.csv", index=False)
    return [f"{base}.md", f"{base}.csv"]


def pivot_tables(ok, plan, outdir: Path) -> list[str]:
    x = plan["x"]
    index = [k for k in ("network", plan["line"]) if k and k in ok.columns and k != x]
    index = list(dict.fromkeys(index)) or [plan["line"] or "key"]
    # every swept key that is neither a column nor a row gets sections of its own (the figures'
    # keys too): the mean is over seeds only, never over devices or other swept settings
    split = [k for k in ("dataset", *plan["panels"], *plan["figures"]) if k in ok.columns and k not in index
             and k != x]
    split = list(dict.fromkeys(split))
    md = ["# Final test accuracy (%), mean over seeds", ""]
    frames = []
    for sel, sub in grouped(ok, split):
        table = sub.pivot_table(index=index, columns=x, values=METRIC, aggfunc="mean")
        md += [f"## {title_for(sel, sub)}", "", markdown(table), ""]
        t = table.reset_index()
        for k, v in sel.items():
            t.insert(0, k, v)
        frames.append(t)
    (outdir / "table_accuracy.md").write_text("\n".join(md))
    import pandas as pd
    pd.concat(frames).to_csv(outdir / "table_accuracy.csv", index=False)
    return ["table_accuracy.md", "table_accuracy.csv"]


def markdown(table) -> str:
    idx_names = [str(n) for n in table.index.names]
    cols = [str(c) for c in table.columns]
    out = ["| " + " | ".join(idx_names + cols) + " |", "|" + "---|" * (len(idx_names) + len(cols))]
    for idx, row in table.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        cells = [f"{v:.2f}" if np.isfinite(v) else "" for v in row.values]
        out.append("| " + " | ".join([str(i) for i in idx] + cells) + " |")
    return "\n".join(out)
