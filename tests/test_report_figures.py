"""Issue 14, `xbar report`: what its figures say, which files it leaves, where it refuses to write.

Stores are made from hand-written records of the specs' real runs (no training); figures are
caught at savefig and read back through matplotlib's own objects.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

from xbar import store
from xbar.errors import ConfigError
from xbar.report import MANIFEST, compare, report
from xbar.sweep import Experiment

NOISE = """
name = "noise"
seeds = [1, 2]

[base]
network = "digits-mlp"
dataset = "digits"
device = "ideal"
bits = 3
epochs = 2

[grid]
update = ["qat", "stochastic"]
"device.read_noise_rel" = [0.0, 0.001, 0.01, 0.1]
"""

LR = """
name = "lr"
seeds = [1, 2]

[base]
network = "digits-mlp"
dataset = "digits"
update = "qat"
bits = 3

[grid]
lr = [0.0001, 0.001, 0.01]
"""

PRUNE = """
name = "p"
command = "prune"

[base]
network = "digits-mlp"
dataset = "digits"
update = "qat"
bits = 4

[grid]
method = ["magnitude", "l1"]
sparsity = [0.5, 0.75]
"""


def fake_store(tmp_path: Path, text: str, name: str = "s.h5", keep=lambda r: True, in_journal: int = 0) -> Path:
    """A store of the spec's runs with made-up results: accuracy falls with the swept value."""
    d = tmp_path / name.replace(".h5", "")
    d.mkdir(exist_ok=True)
    p = d / "spec.toml"
    p.write_text(textwrap.dedent(text))
    exp = Experiment.load(p)
    out = d / name
    store.create(out, exp.spec() | {"name": exp.name}, exp.spec_hash(), exp.file)
    runs = [r for r in exp.expand() if keep(r)]
    for i, r in enumerate(runs):
        acc = 90.0 - 3 * i
        metrics = {}
        if r.config.get("command") == "prune":
            metrics = {"accuracy_before": 95.0, "tiles": 2 + i % 2, "tiles_before": 4, "energy_pj": 10.0 - i,
                       "energy_pj_before": 20.0}
        hist = [{"epoch": e, "test_accuracy": acc - (2 - e), "loss": 0.5,
                 "layers": {"w_min": [-1.0, -1.0], "w_max": [1.0, 1.0], "g_min": [0.0, 0.0], "g_max": [1.0, 1.0]}}
                for e in (1, 2)]
        store.write_journal(out, {
            "key": r.key, "point": r.point, "config": r.config, "status": "ok", "message": "",
            "test_accuracy": acc, "history": hist, "metrics": metrics, "env": {},
            "histograms": [{"counts": [4, 1, 2], "edges": [0.0, 0.3, 0.6, 1.0]}] * 2})
        if i == len(runs) - in_journal - 1:
            store.merge(out)
    return out


@pytest.fixture
def figures(monkeypatch):
    """file name -> Figure of every figure the report saves."""
    seen: dict[str, Figure] = {}
    save = Figure.savefig

    def catch(fig, fname, *a, **k):
        seen[Path(fname).name] = fig
        return save(fig, fname, *a, **k)

    monkeypatch.setattr(Figure, "savefig", catch)
    return seen


def titles(fig: Figure) -> str:
    parts = [fig._suptitle.get_text()] if fig._suptitle else []
    return " | ".join(parts + [ax.get_title() for ax in fig.axes])


def legend(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def one(figures, prefix: str) -> Figure:
    found = [f for n, f in figures.items() if n.startswith(prefix)]
    assert len(found) == 1, (prefix, sorted(figures))
    return found[0]


# ---- what the figures say ------------------------------------------------------------------------

def test_titles_name_network_dataset_and_device(tmp_path, figures):
    report(str(fake_store(tmp_path, NOISE)), str(tmp_path / "rep"))
    assert len(figures) >= 3
    for name, fig in figures.items():
        t = titles(fig)
        assert "network=digits-mlp" in t and "dataset=digits" in t and "device=ideal" in t, (name, t)


def test_device_sweep_has_log_axis_chance_line_and_a_table(tmp_path, figures):
    report(str(fake_store(tmp_path, NOISE)), str(tmp_path / "rep"))
    ax = one(figures, "accuracy_vs_device.read_noise_rel").axes[0]
    assert ax.get_xscale() == "symlog"                         # 0 and 1e-3 .. 0.1: three decades
    chance = [ln for ln in ax.get_lines() if ln.get_label().startswith("chance")]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [10.0, 10.0]
    labels = legend(ax)
    assert sorted(labels) == ["chance (10 %)", "qat", "stochastic"]
    table = (tmp_path / "rep" / "table_accuracy_vs_device.read_noise_rel.md").read_text()
    assert "| network | update | 0.0 | 0.001 | 0.01 | 0.1 |" in table
    csv = (tmp_path / "rep" / "table_accuracy_vs_device.read_noise_rel.csv").read_text().splitlines()
    assert csv[0].split(",")[:3] == ["dataset", "network", "update"] and len(csv) == 3


TWO_DEVICES = """
name = "two"

[base]
network = "digits-mlp"
dataset = "digits"
epochs = 2

[grid]
device = ["pcm-aihwkit", "rram-4bit"]
update = ["qat", "stochastic"]
bits = [1, 2]
"""


def test_the_accuracy_table_keeps_devices_apart(tmp_path):
    """Found on the realistic sweep: the pivot table averaged the two devices' runs as if seeds."""
    report(str(fake_store(tmp_path, TWO_DEVICES)), str(tmp_path / "rep"))
    md = (tmp_path / "rep" / "table_accuracy.md").read_text()
    assert "device=pcm-aihwkit" in md and "device=rram-4bit" in md
    # fake_store: run i (grid order device, update, bits) scores 90 - 3 i: no cell is a mean of two
    assert "| digits-mlp | qat | 90.00 | 87.00 |" in md and "| digits-mlp | qat | 78.00 | 75.00 |" in md
    csv = (tmp_path / "rep" / "table_accuracy.csv").read_text().splitlines()
    assert "device" in csv[0].split(",") and len(csv) == 5


def test_a_swept_value_spanning_decades_gets_a_log_axis(tmp_path, figures):
    report(str(fake_store(tmp_path, LR)), str(tmp_path / "rep"))
    ax = one(figures, "accuracy_vs_lr").axes[0]
    assert ax.get_xscale() == "log"
    assert any(ln.get_label().startswith("chance") for ln in ax.get_lines())


def test_curve_legends_are_unique_and_histograms_have_a_y_label(tmp_path, figures):
    report(str(fake_store(tmp_path, NOISE)), str(tmp_path / "rep"))
    ax = one(figures, "curves__").axes[0]
    labels = [lab for lab in legend(ax) if not lab.startswith("chance")]
    assert len(labels) == 12 and len(set(labels)) == 12, labels          # 16 runs, the best 12
    assert all("seed=" in lab for lab in labels)
    hist = [f for n, f in figures.items() if n.startswith("conductances__")]
    assert hist and all(ax.get_ylabel() == "devices" for f in hist for ax in f.axes)


def test_pruning_plots_start_at_the_unpruned_network(tmp_path, figures):
    report(str(fake_store(tmp_path, PRUNE)), str(tmp_path / "rep"))
    ax = one(figures, "accuracy_vs_sparsity").axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for method in ("magnitude", "l1"):
        xs, ys = list(lines[method].get_xdata()), list(lines[method].get_ydata())
        assert xs[0] == 0.0 and ys[0] == 95.0 and xs[1:] == [0.5, 0.75]
    assert any(lab.startswith("unpruned (95.0 %)") for lab in legend(ax))
    tiles = one(figures, "accuracy_vs_tiles").axes[0]
    xs = [list(ln.get_xdata()) for ln in tiles.get_lines() if ln.get_label() in ("magnitude", "l1")]
    assert xs and all(4.0 in x for x in xs)                               # tiles before pruning


# ---- the journal and diverged runs ---------------------------------------------------------------

def test_report_includes_runs_still_in_the_journal(tmp_path):
    out = fake_store(tmp_path, NOISE, in_journal=3)
    assert len(store.pending(out)) == 3
    report(str(out), str(tmp_path / "rep"))
    readme = (tmp_path / "rep" / "README.md").read_text()
    assert "16 runs: 16 ok." in readme and "3 of them are still in the journal" in readme
    assert len((tmp_path / "rep" / "runs.csv").read_text().splitlines()) == 17
    assert len(store.pending(out)) == 3                                  # a report writes no store


# ---- the output folder ---------------------------------------------------------------------------

def test_a_new_report_replaces_the_old_one_and_leaves_other_files(tmp_path):
    rep = tmp_path / "rep"
    both = fake_store(tmp_path, NOISE, "both.h5")
    first = {Path(f).name for f in report(str(both), str(rep))}
    assert "conductances__update=stochastic.png" in first
    (rep / "notes.txt").write_text("mine")
    (rep / "plot_by_hand.png").write_bytes(b"png")
    qat = fake_store(tmp_path, NOISE, "qat.h5", keep=lambda r: r.point["update"] == "qat")
    second = {Path(f).name for f in report(str(qat), str(rep))}
    on_disk = {p.name for p in rep.iterdir()}
    assert on_disk == second | {"notes.txt", "plot_by_hand.png", MANIFEST}   # nothing stale, nothing lost
    assert "conductances__update=stochastic.png" not in on_disk
    assert (rep / "notes.txt").read_text() == "mine"


def test_a_report_written_before_the_manifest_is_replaced_too(tmp_path):
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "README.md").write_text("# Report of old.h5\n\n## Files\n\n- runs.csv\n- curves__old.png\n")
    (rep / "curves__old.png").write_bytes(b"old")
    (rep / "runs.csv").write_text("old")
    (rep / "mine.csv").write_text("mine")
    report(str(fake_store(tmp_path, NOISE)), str(rep))
    assert not (rep / "curves__old.png").exists() and (rep / "mine.csv").read_text() == "mine"
    assert (rep / "runs.csv").read_text() != "old"


def test_files_no_report_wrote_are_never_overwritten(tmp_path):
    rep = tmp_path / "project"
    rep.mkdir()
    (rep / "README.md").write_text("# My project\n")
    with pytest.raises(ConfigError, match=r"--out .*project: it holds README\.md, which no xbar report wrote"):
        report(str(fake_store(tmp_path, NOISE)), str(rep))
    assert (rep / "README.md").read_text() == "# My project\n"
    assert sorted(p.name for p in rep.iterdir()) == ["README.md"]


def test_report_and_compare_share_a_folder(tmp_path):
    rep = tmp_path / "rep"
    out = fake_store(tmp_path, NOISE)
    report(str(out), str(rep))
    compare(str(out), str(out), str(rep))
    names = {p.name for p in rep.iterdir()}
    assert {"README.md", "compare.md"} <= names
    report(str(out), str(rep))
    assert "compare.md" in {p.name for p in rep.iterdir()}


def test_unwritable_out_is_one_line_before_any_work(tmp_path, monkeypatch):
    out = fake_store(tmp_path, NOISE)
    monkeypatch.setattr(store, "load", lambda *a, **k: pytest.fail("read the store before checking --out"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"^--out .*file/rep: cannot write there .*; choose another folder"):
        report(str(out), str(blocker / "rep"))
    with pytest.raises(ConfigError, match=r"^--out .*file: is a file, expected a folder"):
        report(str(out), str(blocker))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line_before_any_work(tmp_path, monkeypatch):
    out = fake_store(tmp_path, NOISE)
    monkeypatch.setattr(store, "load", lambda *a, **k: pytest.fail("read the store before checking --out"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"^--out .*ro: cannot write there \(Permission denied\)"):
            report(str(out), str(ro))
    finally:
        ro.chmod(0o700)


def test_compare_tables_ignore_the_new_columns(tmp_path):
    out = fake_store(tmp_path, NOISE)
    files = compare(str(out), str(out), str(tmp_path / "cmp"))
    text = Path(next(f for f in files if f.endswith(".md"))).read_text()
    assert "16 matching runs; mean difference B - A: +0.00" in text
    assert np.isfinite(store.load(out)["test_accuracy"]).all()
