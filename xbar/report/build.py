"""`xbar report` and `--compare`: a store's figures and tables, built in a staging folder and moved
in."""


import json
from pathlib import Path

from .. import store
from ..errors import XbarError
from .figures import accuracy_vs_device, accuracy_vs_x, curves, histograms
from .layout import METRIC, RESULT_X, OutputFolder, plan_axes, pyplot
from .tables import device_table, pivot_tables
from .timeline import accuracy_vs_time

# ---- the report ----------------------------------------------------------------------------------

def report(path: str, out: str) -> list[str]:
    """Write figures (PNG) and tables (Markdown, CSV) for store `path` into folder `out`."""
    if not Path(path).is_file():
        raise store.StoreError(f"{path}: no such store file")
    dest = OutputFolder(out, "report")
    try:
        plt = pyplot()
        store.verify(path)
        df = store.load(path)
        if not len(df):
            raise XbarError(f"{path}: the store holds no runs yet")
        meta = store.info(path)
        in_journal = len(set(df["key"]) - set(meta["runs"]))
        swept = list(meta["spec"].get("grid", {}))
        outdir = dest.stage
        plan = plan_axes(df, swept)
        ok = df[df["status"] == "ok"]
        written: list[str] = []

        # runs table (everything, one row per run)
        df.to_csv(outdir / "runs.csv", index=False)
        written.append("runs.csv")

        if plan["x"] is not None and len(ok):
            written += accuracy_vs_x(plt, ok, plan, outdir)
            written += pivot_tables(ok, plan, outdir)
        for k in (k for k in swept if k.startswith("device.")):
            written += accuracy_vs_device(plt, ok, k, plan, outdir)
            written += device_table(ok, k, plan, outdir)
        for k in RESULT_X:
            if k in ok.columns and k not in swept and ok[k].notna().any():
                written += accuracy_vs_device(plt, ok, k, plan, outdir, split_x=False)
        written += accuracy_vs_time(plt, ok, plan, outdir)
        written += curves(plt, path, ok, plan, outdir)
        written += histograms(plt, path, ok, plan, outdir)
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

def compare(path_a: str, path_b: str, out: str) -> list[str]:
    """Two stores side by side: runs matched by resolved config (minus seed-independent paths)."""
    for p in (path_a, path_b):
        if not Path(p).is_file():
            raise store.StoreError(f"{p}: no such store file")
    dest = OutputFolder(out, "compare")
    try:
        plt = pyplot()
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
