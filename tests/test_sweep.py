"""Sweeps: spec validation, expansion, the store, resuming after SIGKILL, Dask = local, reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from xbar import store
from xbar.errors import ConfigError
from xbar.sweep import Experiment, filter_runs, parse_only, run_key, run_sweep

TINY = """
name = "tiny"
seeds = [1, 2]

[base]
network = "digits-mlp"
dataset = "digits"
epochs = 2
train_limit = 200
test_limit = 100
lr_gamma = 1.0

[grid]
update = ["qat", "stochastic"]
bits = [2, 3]
"""


def spec(tmp_path, text=TINY, name="tiny.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_expand_product_seeds_exclude_and_device_keys(tmp_path):
    text = TINY.replace('[grid]', '[[exclude]]\nupdate = "stochastic"\nbits = [2]\n\n[grid]') \
        .replace('bits = [2, 3]', 'bits = [2, 3]\n"device.read_noise_rel" = [0.0, 0.05]')
    exp = Experiment.load(spec(tmp_path, text))
    runs = exp.expand()
    assert len(runs) == (2 * 2 * 2 - 2) * 2          # exclusion removes stochastic@2 bits (both noises)
    assert all(not (r.point["update"] == "stochastic" and r.point["bits"] == 2) for r in runs)
    noisy = [r for r in runs if r.point["device.read_noise_rel"] == 0.05]
    assert noisy and all(r.config["device_set"] == "read_noise_rel=0.05" for r in noisy)
    assert len({r.key for r in runs}) == len(runs)
    assert runs[0].key == run_key(runs[0].config)                    # stable: a function of the config
    assert Experiment.load(spec(tmp_path, text)).expand()[0].key == runs[0].key
    only = filter_runs(runs, parse_only(["update=qat", "bits=3"]))
    assert {(r.point["update"], r.point["bits"]) for r in only} == {("qat", 3)}


@pytest.mark.parametrize("text,match", [
    ("name = 'x'\n[grid\nbits = [1]", r"bad\.toml: malformed TOML.*line"),
    (TINY.replace("[grid]", "[grdi]"), r"grdi: unknown key \(did you mean 'grid'\?\)"),
    (TINY.replace("bits = [2, 3]", "bist = [2, 3]"), r"grid\.bist: unknown key \(did you mean 'bits'\?\)"),
    (TINY.replace("bits = [2, 3]", "bits = [2, 30]"), r"run 3 \(update=qat, bits=30, seed=1\).*bits = 30 is out of range"),
    (TINY.replace("update = [\"qat\", \"stochastic\"]\nbits = [2, 3]", ""), r"the grid is empty"),
    (TINY.replace("bits = [2, 3]", "bits = []"), r"grid\.bits = \[\]: expected a non-empty list"),
    (TINY.replace("bits = [2, 3]", '"device.read_nosie_rel" = [0.1]'), r"unknown device field \(did you mean 'read_noise_rel'"),
    (TINY.replace("[grid]", "[[exclude]]\nupdate = ['qat', 'stochastic']\n\n[grid]"), r"every run of the grid is excluded"),
    (TINY.replace("epochs = 2", "epochs = 2\nbits = 3"), r"bits set both in \[base\] and \[grid\]"),
])
def test_bad_specs_fail_before_any_work(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        Experiment.load(spec(tmp_path, text, "bad.toml")).expand()


def test_missing_dataset_error_or_skip(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XBAR_DATA", raising=False)
    text = TINY.replace('dataset = "digits"\n', "").replace("[grid]", '[grid]\ndataset = ["digits", "mnist"]')
    with pytest.raises(ConfigError, match=r"mnist test files not found.*missing_data = \"skip\""):
        Experiment.load(spec(tmp_path, text)).expand()
    notes = []
    runs = Experiment.load(spec(tmp_path, 'missing_data = "skip"\n' + text)).expand(notes=notes)
    assert {r.config["dataset"] for r in runs} == {"digits"} and "skipping dataset 'mnist'" in notes[0]


def test_unwritable_out_and_foreign_store(tmp_path):
    exp = Experiment.load(spec(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write there"):
        run_sweep(exp, blocker / "sub" / "r.h5", workers=1, progress=False, print_fn=lambda s: None)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(ConfigError, match="not a readable HDF5 file"):
        run_sweep(exp, junk, workers=1, progress=False, print_fn=lambda s: None)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    exp = Experiment.load(spec(d))
    out = d / "tiny.h5"
    summary = run_sweep(exp, out, workers=2, progress=False, print_fn=lambda s: None)
    return d, exp, out, summary


def test_local_sweep_stores_everything_and_resumes(tiny_store):
    _, exp, out, summary = tiny_store
    assert summary["done"] == 8 and summary["failed"] == 0
    df = store.load(out)
    assert len(df) == 8 and set(df["status"]) == {"ok"}
    assert set(df["bits"]) == {2, 3} and set(df["seed"]) == {1, 2}
    assert df["test_accuracy"].between(0, 100).all()
    h = store.history(out, df["key"][0])
    assert list(h["epoch"]) == [1, 2] and h["w_min"].shape == (2, 2) and np.isfinite(h["g_max"]).all()
    counts, edges = store.histograms(out, df["key"][0])[0]
    assert counts.sum() == 2 * 64 * 32 and len(edges) == len(counts) + 1   # both devices of each pair
    meta = store.info(out)
    assert meta["spec_hash"] == exp.spec_hash() and meta["format"] == "xbar-store"
    again = run_sweep(exp, out, workers=2, progress=False, print_fn=lambda s: None)
    assert again["todo"] == 0 and len(store.load(out)) == 8          # nothing re-run, nothing duplicated
    # the same runs, trained alone, give the same numbers (seeded, bit for bit)
    from xbar.train import train
    r = train(df.iloc[0][[c for c in df.columns if c in exp.expand()[0].config]].to_dict())
    assert r["test_accuracy"] == df["test_accuracy"][0]


def test_changed_spec_is_refused_unless_forced(tiny_store, tmp_path):
    _, _, out, _ = tiny_store
    changed = Experiment.load(spec(tmp_path, TINY.replace("bits = [2, 3]", "bits = [2, 3, 4]"), "tiny.toml"))
    with pytest.raises(ConfigError, match="different spec.*--force"):
        run_sweep(changed, out, workers=1, progress=False, print_fn=lambda s: None, dry_run=False)
    res = run_sweep(changed, out, workers=2, progress=False, print_fn=lambda s: None, force=True,
                    only=parse_only(["bits=4", "seed=1"]))
    assert res["done"] == 2 and len(store.load(out)) == 10


def test_dry_run_lists_and_estimates(tiny_store, tmp_path):
    _, exp, _, _ = tiny_store
    lines = []
    s = run_sweep(exp, tmp_path / "none.h5", workers=2, dry_run=True, print_fn=lines.append)
    # 8 run lines, what splits the stacks, the two qat stacks (bits 2 and 3 of one seed), why the
    # lone runs are alone (stochastic does not stack), then the estimate
    assert s["todo"] == 8 and len(lines) == 13 and "estimated" in lines[-1] and "6 task(s) (2 stacked)" in lines[-1]
    assert any("run(s) alone: update 'stochastic' does not stack" in line for line in lines)
    assert not (tmp_path / "none.h5").exists()


def test_sigkill_loses_only_runs_in_flight(tmp_path):
    # ~1.5 s per run (40 epochs of all digits through 6-bit ADCs): slow enough to kill mid-sweep
    text = (TINY.replace("seeds = [1, 2]", "seeds = [1, 2, 3, 4]")
            .replace("epochs = 2\ntrain_limit = 200\ntest_limit = 100", "epochs = 40\nadc_bits = 6"))
    p = spec(tmp_path, text)
    out = tmp_path / "k.h5"
    cmd = [sys.executable, "-m", "xbar.cli", "sweep", str(p), "--workers", "2", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and len(store.pending(out)) + (len(store.stored_keys(out)) if out.exists() else 0) < 2:
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"sweep ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert out.exists()
    before = len(store.stored_keys(out)) + len(store.pending(out))
    assert 2 <= before < 16
    # Ctrl-C / SIGTERM: the sweep stops its workers, stores what finished and exits 130
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while time.time() < deadline and len(store.stored_keys(out)) + len(store.pending(out)) < before + 1:
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert "re-run the same command" in proc.stderr.read().decode()
    assert not store.pending(out) and len(store.stored_keys(out)) >= before + 1
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    df = store.load(out)
    assert len(df) == 16 and df["key"].is_unique and set(df["status"]) == {"ok"}
    assert not store.pending(out)


def test_dask_cluster_gives_the_same_store_as_local(tiny_store, tmp_path):
    distributed = pytest.importorskip("distributed")
    _, exp, out_local, _ = tiny_store
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        out = tmp_path / "dask.h5"
        res = run_sweep(exp, out, cluster=cluster.scheduler_address, progress=False, print_fn=lambda s: None)
    assert res["done"] == 8
    a = store.load(out_local).set_index("key")
    b = store.load(out).set_index("key")
    a = a.loc[[k for k in b.index]]
    assert list(b["test_accuracy"]) == list(a["test_accuracy"])
    for k in b.index:
        ha, hb = store.history(out_local, k), store.history(out, k)
        for name in ("test_accuracy", "loss", "step_loss", "w_min", "g_max"):
            assert np.array_equal(ha[name], hb[name], equal_nan=True), name


def test_unreachable_cluster_is_a_clear_error(tiny_store, tmp_path):
    pytest.importorskip("distributed")
    _, exp, _, _ = tiny_store
    with pytest.raises(ConfigError, match="cannot reach a Dask scheduler"):
        run_sweep(exp, tmp_path / "x.h5", cluster="tcp://127.0.0.1:1", progress=False, print_fn=lambda s: None)


def test_report_and_compare_write_figures_and_tables(tiny_store, tmp_path):
    pytest.importorskip("matplotlib")
    from xbar.report import compare, report
    _, _, out, _ = tiny_store
    files = report(str(out), str(tmp_path / "rep"))
    names = {Path(f).name for f in files}
    assert "table_accuracy.md" in names and "table_accuracy.csv" in names and "runs.csv" in names
    assert any(n.startswith("accuracy_vs_bits") for n in names) and any(n.startswith("curves") for n in names)
    assert any(n.startswith("conductances") for n in names)
    table = (tmp_path / "rep" / "table_accuracy.md").read_text()
    assert "| network | update | 2 | 3 |" in table
    cmp_files = compare(str(out), str(out), str(tmp_path / "cmp"))
    assert "mean difference B - A: +0.00" in Path(cmp_files[1]).read_text()


def test_report_plots_accuracy_vs_a_swept_device_parameter(tmp_path):
    pytest.importorskip("matplotlib")
    from xbar.report import report
    text = (TINY.replace("seeds = [1, 2]", "seeds = [1]")
            .replace('update = ["qat", "stochastic"]\nbits = [2, 3]',
                     'update = ["qat"]\nbits = [3]\n"device.read_noise_rel" = [0.0, 0.05, 0.2]'))
    exp = Experiment.load(spec(tmp_path, text))
    out = tmp_path / "noise.h5"
    run_sweep(exp, out, workers=1, progress=False, print_fn=lambda s: None)
    df = store.load(out)
    assert sorted(df["device.read_noise_rel"]) == [0.0, 0.05, 0.2]
    assert set(df["device_set"]) == {"read_noise_rel=0.0", "read_noise_rel=0.05", "read_noise_rel=0.2"}
    files = [Path(f).name for f in report(str(out), str(tmp_path / "rep"))]
    assert any(f.startswith("accuracy_vs_device.read_noise_rel") for f in files)


PRUNE = """
name = "p"
command = "prune"

[base]
network = "digits-mlp"
dataset = "digits"
update = "qat"
bits = 4
epochs = 3
rounds = 2
retrain_epochs = 1
lr_gamma = 1.0

[grid]
method = ["magnitude", "l1"]
sparsity = [0.5]
"""


def test_pruning_sweep_stores_hardware_results_and_shares_pretraining(tmp_path):
    pytest.importorskip("matplotlib")
    from xbar.report import report
    exp = Experiment.load(spec(tmp_path, PRUNE))
    runs = exp.expand()
    assert {r.config["method"] for r in runs} == {"magnitude", "l1"} and runs[0].config["command"] == "prune"
    out = tmp_path / "p.h5"
    res = run_sweep(exp, out, workers=1, progress=False, print_fn=lambda s: None)
    assert res["done"] == 2 and res["failed"] == 0
    df = store.load(out)
    assert set(df["status"]) == {"ok"} and (df["tiles"] <= df["tiles_before"]).all()
    assert (df["energy_pj_after"] < df["energy_pj_before"]).all() and df["accuracy_before"].nunique() == 1
    assert len(list((tmp_path / "p.h5.cache").glob("pretrain-*.h5"))) == 1     # trained once, shared
    names = [Path(f).name for f in report(str(out), str(tmp_path / "rep"))]
    assert any(n.startswith("accuracy_vs_tiles") for n in names)


@pytest.mark.parametrize("text,match", [
    (PRUNE.replace('command = "prune"', 'command = "prnue"'), r"command = 'prnue': expected one of 'train', 'prune'"),
    (PRUNE.replace('command = "prune"\n', ""), r"base\.rounds: a pruning option; set command = \"prune\""),
    (PRUNE.replace("sparsity = [0.5]", "sparsity = [1.5]"), r"run 1 .*sparsity = 1\.5"),
])
def test_bad_pruning_specs(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        Experiment.load(spec(tmp_path, text)).expand()
