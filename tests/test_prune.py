"""Pruning: configs and bad input, criteria against references, masks through every rule and update,
crossbar-aware and hardware-aware methods, schedules, determinism and the command line."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from xbar import cost as xc
from xbar import prune as xp
from xbar.errors import ConfigError
from xbar.train import TrainConfig
from xbar.train.loop import load_data, train

FAST = {"network": "digits-mlp", "dataset": "digits", "epochs": 1, "lr_gamma": 1.0, "eval_train": False}


@pytest.fixture(scope="module")
def digits():
    return load_data(TrainConfig(dataset="digits"))


def trained(digits, **kw):
    cfg = TrainConfig.from_dict(FAST | kw).resolve()
    return train(cfg, data=digits, keep_trainer=True)["_trainer"]


# ---- configs and bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("s", [1.0, -0.1, 1.5])
def test_sparsity_outside_0_1_is_refused(s):
    with pytest.raises(ConfigError, match=r"sparsity = .* is out of range: expected a number in \[0, 1\)"):
        xp.PruneConfig(sparsity=s)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        xp.PruneConfig.from_dict({"method": "magnitud"})
    text = str(e.value)
    assert "did you mean 'magnitude'" in text
    for m in xp.METHODS:
        assert repr(m) in text


def test_resolve_defaults_and_bad_combinations():
    r = xp.PruneConfig(method="magnitude").resolve()
    assert (r.granularity, r.scope, r.normalise, r.sparsity) == ("weight", "global", "l2", 0.5)
    r = xp.PruneConfig(method="l1").resolve()
    assert (r.granularity, r.scope, r.normalise) == ("unit", "layer", "none")
    r = xp.PruneConfig(method="hardware").resolve()
    assert (r.budget, r.criterion, r.sparsity) == (0.5, "taylor", None)
    assert xp.PruneConfig(schedule="one-shot", rounds=7).resolve().rounds == 1
    with pytest.raises(ConfigError, match="driven by budget"):
        xp.PruneConfig(method="hardware", sparsity=0.5).resolve()
    with pytest.raises(ConfigError, match="not both"):
        xp.PruneConfig(sparsity=0.5, budget=0.5).resolve()
    with pytest.raises(ConfigError, match="granularity 'weight'"):
        xp.PruneConfig(method="l2", granularity="weight").resolve()
    with pytest.raises(ConfigError, match="method 'l1'"):
        xp.PruneConfig(method="magnitude", granularity="unit").resolve()
    with pytest.raises(ConfigError, match="criterion applies"):
        xp.PruneConfig(method="l1", criterion="taylor").resolve()


# ---- criteria and selection against slow references ----------------------------------------------

def test_layer_magnitude_removes_exactly_the_smallest(digits):
    tr = trained(digits)
    pr = xp.Pruner(tr, xp.PruneConfig(method="magnitude", scope="layer").resolve(), digits)
    pr.scores()
    masks = pr.ranked(0.3, xp.current_masks(tr.net))
    for layer, m in zip(tr.net.layers, masks):
        W = np.abs(layer.crossbar.weights() if layer.crossbar else layer.W)
        k = int(np.floor(0.3 * W.size + 1e-9))
        assert (~m).sum() == k
        assert W[~m].max() <= W[m].min()


def test_global_l2_normalised_ranking_matches_reference(digits):
    tr = trained(digits)
    pr = xp.Pruner(tr, xp.PruneConfig(method="magnitude").resolve(), digits)
    pr.scores()
    masks = pr.ranked(0.6, xp.current_masks(tr.net))
    pooled = []
    for i, layer in enumerate(tr.net.layers):
        a = np.abs(layer.W).astype(np.float64)
        pooled += [(v, i, j) for j, v in enumerate((a / np.sqrt((a ** 2).sum())).ravel())]
    pooled.sort(key=lambda t: t[0])
    n = int(np.floor(0.6 * len(pooled) + 1e-9))
    for i, m in enumerate(masks):
        gone = {j for _, li, j in pooled[:n] if li == i}
        assert set(np.flatnonzero(~m.ravel())) == gone


def test_unit_pruning_removes_column_and_next_row(digits):
    tr = trained(digits)
    pr = xp.Pruner(tr, xp.PruneConfig(method="l2", sparsity=0.25).resolve(), digits)
    pr.scores()
    masks = pr.ranked(0.25, xp.current_masks(tr.net))
    W = tr.net.layers[0].W
    norms = np.sqrt((W.astype(np.float64) ** 2).sum(axis=0))
    gone = np.sort(np.argsort(norms, kind="stable")[:8])
    assert np.array_equal(np.flatnonzero(~masks[0].any(axis=0)), gone)
    assert np.array_equal(np.flatnonzero(~masks[1].any(axis=1)), gone)
    assert masks[0][:, gone].sum() == 0 and masks[1][gone].sum() == 0


def test_taylor_gradients_match_central_differences(digits):
    tr = trained(digits, update="float")
    net = tr.net
    X, y = digits[0][:5].astype(np.float64).astype(np.float32), digits[1][:5]
    act = xp.activity(net, X, y)
    eps = 1e-2
    for m, i in [(0, 3), (2, 20), (4, 40)]:
        def loss(x, m=m):
            out, _ = net.forward(x[None].astype(np.float32))
            return net.loss(out, y[m:m + 1])[0]
        xp_, xm_ = X[m].astype(np.float64).copy(), X[m].astype(np.float64).copy()
        xp_[i] += eps
        xm_[i] -= eps
        fd = (loss(xp_) - loss(xm_)) / (2 * eps)
        assert act.gx[m, i] == pytest.approx(fd, rel=2e-2, abs=2e-4)
    # unit taylor score: mean over samples of |z dL/dz|
    s = xp.unit_scores("taylor", act, ("hidden", 0), np.random.default_rng(0))
    assert np.allclose(s, np.abs(act.z[0] * act.gz[0]).mean(axis=0))


def test_weight_taylor_equals_per_sample_mean():
    rng = np.random.default_rng(0)
    x, d, W = rng.normal(size=(7, 5)), rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    act = xp.Activity([x], [None], [d], [], None, [W])
    ref = np.mean([np.abs(np.outer(x[m], d[m]) * W) for m in range(7)], axis=0)
    assert np.allclose(xp.weight_scores("taylor", act, 0, rng), ref)


# ---- masks persist through training and reprogramming ---------------------------------------------

COMBOS = [("bp", "qat", "ideal"), ("fa", "nearest", "ideal"), ("bp", "nearest", "ideal"), ("dfa", "stochastic", "ideal"),
          ("hsic", "float", "ideal"), ("sg", "qat", "ideal"), ("bp", "mixed", "ideal"),
          ("bp", "pulse", "agsi"), ("fa", "mixed", "agsi")]


@pytest.mark.parametrize("rule,update,device", COMBOS)
def test_masks_persist_with_every_rule_and_update(digits, rule, update, device):
    kw = {"rule": rule, "update": update, "device": device, "tile": "16x16"}
    if update not in ("float",) and device == "ideal":
        kw["bits"] = 3
    if rule == "hsic":
        kw["batch_size"] = 128
    if update == "nearest":
        # grids with a zero level (see below), fine enough that digits' small weights survive
        kw.update(quant="symm" if rule == "fa" else "device", bits=6)
    tr = trained(digits, **kw)
    masks = [np.random.default_rng(i).random(layer.W.shape) < 0.5 for i, layer in enumerate(tr.net.layers)]
    xp.apply_masks(tr, masks)
    xp.retrain(tr, digits[0], digits[1], steps=15)
    for layer, m in zip(tr.net.layers, masks):
        assert np.array_equal(layer.mask, m)
        assert np.all(layer.stored_weights()[~m] == 0)
        if layer.crossbar is not None:
            assert np.all(layer.crossbar.weights()[~m] == 0)
            gp, gn = layer.crossbar.conductances()
            g_min = layer.crossbar.device.g_min_us
            assert np.all(gp[0][:layer.n_in][~m] == g_min) and np.all(gn[0][:layer.n_in][~m] == g_min)
            assert not np.all(layer.crossbar.weights()[m] == 0)
    # and pruning only ever removes
    with pytest.raises(ConfigError, match="only remove"):
        xp.apply_masks(tr, [np.ones_like(m) for m in masks])


@pytest.mark.parametrize("kw", [{"update": "nearest", "bits": 3, "quant": "asymm"},
                                {"update": "qat", "device": "rram-4bit"}])
def test_pruned_cells_unprogrammed_on_any_grid(digits, kw):
    tr = trained(digits, **kw)
    masks = [np.random.default_rng(i).random(layer.W.shape) < 0.5 for i, layer in enumerate(tr.net.layers)]
    xp.apply_masks(tr, masks)
    xp.retrain(tr, digits[0], digits[1], steps=3)
    for layer, m in zip(tr.net.layers, masks):
        gp, gn = layer.crossbar.conductances()
        assert np.all(gp[0][~m] == layer.crossbar.device.g_min_us) and np.all(gn[0][~m] == gp[0][~m])
        assert np.all(layer.crossbar.weights()[~m] == 0)


def test_retrain_only_given_layers(digits):
    tr = trained(digits, update="qat", bits=3)
    before = [layer.W.copy() for layer in tr.net.layers]
    xp.retrain(tr, digits[0], digits[1], steps=5, layers=[1])
    assert np.array_equal(tr.net.layers[0].W, before[0])
    assert not np.array_equal(tr.net.layers[1].W, before[1])
    assert tr.only_layers is None   # the restriction ends with the call


# ---- whole runs -------------------------------------------------------------------------------------

def run(digits, train_kw=None, **prune_kw):
    cfg = FAST | {"update": "qat", "bits": 4, "tile": "16x16", "epochs": 3} | (train_kw or {})
    return xp.prune(cfg, {"rounds": 2, "retrain_epochs": 1, "score_samples": 300, "holdout": 300} | prune_kw,
                    data=digits)


def test_iterative_magnitude_geometric_targets(digits):
    r = run(digits, method="magnitude", sparsity=0.75)
    assert r["status"] == "ok"
    assert [round(e["target"], 6) for e in r["rounds"]] == [0.5, 0.75]
    assert r["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert r["hardware_after"]["devices"] < 0.3 * r["hardware_before"]["devices"]
    for key in ("accuracy_before", "accuracy_after", "sparsity_layers", "hardware_before", "hardware_after"):
        assert key in r
    for key in ("devices", "tiles", "adc_conversions", "energy_pj"):
        assert key in r["hardware_before"] and key in r["hardware_after"]


def test_l1_units_halves_hidden_layer(digits):
    r = run(digits, method="l1", sparsity=0.5, schedule="one-shot")
    assert r["status"] == "ok" and r["hardware_after"]["widths"] == [64, 16, 10]


def test_crossbar_method_releases_tiles(digits):
    r = run(digits, method="crossbar", sparsity=0.5)
    assert r["status"] == "ok"
    assert r["hardware_after"]["tiles"] <= 0.5 * r["hardware_before"]["tiles"]


def test_hardware_search_meets_budget(digits):
    r = run(digits, method="hardware", budget=0.6, hw_step=0.1)
    assert r["status"] == "ok"
    assert r["hardware_after"]["energy_pj"] <= 0.6 * r["hardware_before"]["energy_pj"] * (1 + 1e-9)
    assert all("proposals" in e for e in r["rounds"])


@pytest.mark.parametrize("finetune", [0, 5])
def test_proposals_leave_the_trainer_untouched(digits, finetune):
    tr = trained(digits, update="qat", bits=4, tile="16x16")
    cfg = xp.PruneConfig(method="hardware", hw_finetune_steps=finetune, holdout=200).resolve()
    pr = xp.Pruner(tr, cfg.with_(retrain_lr=1e-4), digits)
    pr.scores()
    pr.metric0 = pr.metric(xp.current_masks(tr.net))
    W = [layer.W.copy() for layer in tr.net.layers]
    G = [layer.crossbar.conductances()[0].copy() for layer in tr.net.layers]
    masks, info = pr.hardware_step(xp.current_masks(tr.net), 0.9 * pr.metric0)
    assert [p["group"] for p in info["proposals"]] == [["input", 0], ["hidden", 0]]
    assert all(p["cost"] <= 0.9 * pr.metric0 for p in info["proposals"])
    assert any(not m.all() for m in masks)
    for layer, w, g in zip(tr.net.layers, W, G):
        assert layer.mask is None and np.array_equal(layer.W, w)
        assert np.array_equal(layer.crossbar.conductances()[0], g)


def test_unmeetable_budget_stops_and_keeps_what_was_done(digits):
    r = run(digits, method="magnitude", budget=0.2)
    assert r["status"] == "stopped" and "budget cannot be met" in r["message"]
    assert r["accuracy_after"] is not None
    r = run(digits, method="hardware", budget=0.05, hw_step=0.3, prune_inputs=False)
    assert r["status"] == "stopped" and "budget cannot be met" in r["message"]
    assert r["rounds"] and r["sparsity"] > 0


def test_global_pruning_that_would_empty_a_layer_stops(digits):
    tr = trained(digits)
    tr.net.layers[1].W *= 1e-6
    pr = xp.Pruner(tr, xp.PruneConfig(method="magnitude", normalise="none").resolve(), digits)
    pr.scores()
    with pytest.raises(xp.PruneStop, match="would empty layer 1"):
        pr.ranked(0.9, xp.current_masks(tr.net))


def test_same_seed_same_result(digits):
    a = run(digits, method="random", sparsity=0.5)
    b = run(digits, method="random", sparsity=0.5)
    for k in ("accuracy_after", "sparsity_layers", "hardware_after"):
        assert a[k] == b[k]


def test_start_from_saved_run(digits, tmp_path):
    from xbar.checkpoint import save
    cfg = TrainConfig.from_dict(FAST | {"update": "qat", "bits": 4, "tile": "16x16"}).resolve()
    res = train(cfg, data=digits, keep_trainer=True)
    save(tmp_path / "pre.h5", res.pop("_trainer"), cfg, res)
    r = xp.prune(cfg, {"method": "l2", "sparsity": 0.25, "schedule": "one-shot", "retrain_epochs": 0,
                       "init": str(tmp_path / "pre.h5")}, data=digits)
    assert r["pretrain"] == {"init": str(tmp_path / "pre.h5")}
    assert r["accuracy_before"] == pytest.approx(res["test_accuracy"])


def test_pruned_cost_matches_cost_model(digits):
    tr = trained(digits, update="qat", bits=4, tile="16x16")
    masks = xp.current_masks(tr.net)
    masks = xp.remove_units(masks, ("hidden", 0), np.arange(16))
    xp.apply_masks(tr, masks)
    c = xc.net_cost(tr.net)
    assert c["total"]["tiles"] == xc.network_cost(masks, xc.Periphery(tile=(16, 16)))["total"]["tiles"]
    assert c["total"]["tiles"] < xc.net_cost(trained(digits, update="qat", bits=4, tile="16x16").net)["total"]["tiles"]


# ---- command line -----------------------------------------------------------------------------------

def _cli(argv):
    parser = argparse.ArgumentParser(prog="xbar")
    sub = parser.add_subparsers(dest="command")
    from xbar.cli.prune import add_cost, add_prune
    add_prune(sub)
    add_cost(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_json(capsys, tmp_path):
    rc = _cli(["prune", "--network", "digits-mlp", "--dataset", "digits", "--epochs", "2", "--update", "qat",
               "--bits", "4", "--tile", "16x16", "--method", "l1", "--sparsity", "0.5", "--rounds", "2",
               "--retrain-epochs", "1", "--json", "--out", str(tmp_path / "p.h5")])
    out = capsys.readouterr().out
    r = json.loads(out)
    assert rc == 0 and r["status"] == "ok" and len(out.strip().splitlines()) == 1
    assert r["hardware_after"]["widths"] == [64, 16, 10]
    from xbar.checkpoint import load
    assert load(tmp_path / "p.h5").network().layers[0].mask is not None
    assert _cli(["cost", "--run", str(tmp_path / "p.h5"), "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["total"]["tiles"] == r["hardware_after"]["tiles"] < r["hardware_before"]["tiles"]
    assert c["total"]["energy_pj"] == pytest.approx(r["hardware_after"]["energy_pj"])


def test_cli_text(capsys):
    rc = _cli(["prune", "--epochs", "1", "--method", "magnitude", "--sparsity", "0.5", "--schedule",
               "one-shot", "--retrain-epochs", "0", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "sparsity 50.0%" in out and "energy_pj" in out


def test_cli_bad_sparsity_is_a_config_error():
    with pytest.raises(ConfigError, match=r"sparsity = 1.0 is out of range"):
        _cli(["prune", "--sparsity", "1"])


# ---- networks with convolutions -------------------------------------------------------------------

def test_conv_network_cost_and_unstructured_pruning():
    rng = np.random.default_rng(0)
    data = (rng.random((96, 784), dtype=np.float32), rng.integers(0, 10, 96),
            rng.random((32, 784), dtype=np.float32), rng.integers(0, 10, 32))
    cfg = {"network": "lenet5", "dataset": "fmnist", "epochs": 1, "update": "qat", "bits": 4,
           "eval_train": False, "batch_size": 32}
    with pytest.raises(ConfigError, match="dense networks only"):
        xp.prune(cfg, {"method": "l1"}, data=data)
    r = xp.prune(cfg, {"method": "magnitude", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 1,
                       "score_samples": 32}, data=data)
    assert r["status"] == "ok" and r["sparsity"] == pytest.approx(0.5, abs=1e-3)
    # a convolution reads its (k·k·C_in, C_out) matrix once per output position: 28x28, then 10x10
    assert r["hardware_before"]["array_reads"] == 28 * 28 * 1 + 10 * 10 * 3 + 14 + 4 + 2
