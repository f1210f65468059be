"""Stacked training (xbar.train.stack, xbar.kernels.stack, sweep groups): every variant of a stack
trains bit for bit as it does alone; what cannot stack runs alone, and says why."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from xbar import Crossbar, Device, store
from xbar import mapping as mp
from xbar.errors import ConfigError
from xbar.kernels.stack import adadelta_round_program_stack, round_program_stack
from xbar.sweep import Experiment, plan_groups, run_sweep
from xbar.train import TrainConfig, train, train_many
from xbar.train.optim import Adadelta

BASE = {"network": "digits-mlp", "dataset": "digits", "update": "nearest", "recipe": "seed", "device": "ideal",
        "epochs": 2, "train_limit": 600, "test_limit": 200, "eval_train": False}
GRID = [(2, "global", "asymm"), (3, "local", "symm"), (5, "local", "asymm"), (8, "global", "symm")]


def _same(alone: dict, stacked: dict, weights: bool = True) -> None:
    def hist(r):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in r["history"]]
    assert hist(alone) == hist(stacked)
    for k in ("status", "message", "test_accuracy", "hardware", "config"):
        assert alone[k] == stacked[k], k
    if weights:
        for la, lb in zip(alone["_trainer"].net.layers, stacked["_trainer"].net.layers):
            assert np.array_equal(la.W, lb.W) and np.array_equal(la.b, lb.b)
            if la.crossbar is not None:
                for ga, gb in zip(la.crossbar.conductances(), lb.crossbar.conductances()):
                    assert np.array_equal(ga, gb)


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "hsic", "sg"])
def test_each_variant_of_a_stack_trains_as_alone(rule):
    cfgs = [TrainConfig(**BASE, rule=rule, bits=b, range=r, quant=q) for b, r, q in GRID]
    many = train_many(cfgs, keep_trainer=True)
    for cfg, m in zip(cfgs, many):
        _same(train(cfg, keep_trainer=True), m)
        assert m["stacked"] == len(cfgs)


def test_a_diverging_variant_leaves_the_stack_with_the_message_it_has_alone():
    # w_max 1e30: the rounding grid's steps are astronomically wide, so that run explodes at once
    cfgs = [TrainConfig(**BASE, rule="bp", bits=4, range="global", quant="asymm", w_max=w) for w in (1.0, 1e30, 0.5)]
    many = train_many(cfgs, keep_trainer=True)
    assert [m["status"] for m in many] == ["ok", "diverged", "ok"]
    for cfg, m in zip(cfgs, many):
        alone = train(cfg, keep_trainer=True)
        _same(alone, m)
    assert "at epoch 1, step" in many[1]["message"]


def test_float_variants_stack_too():
    cfgs = [TrainConfig(**{**BASE, "update": "float", "recipe": None}, rule="bp", optimizer=o)
            for o in ("adam",)] * 2
    many = train_many(cfgs, keep_trainer=True)
    _same(train(cfgs[0], keep_trainer=True), many[0])
    assert many[0]["history"] == many[1]["history"] or many[0]["test_accuracy"] == many[1]["test_accuracy"]


def test_train_many_refuses_what_cannot_share_a_stack():
    with pytest.raises(ConfigError, match="differ in more than device-side fields"):
        train_many([TrainConfig(**BASE, rule="bp", bits=3), TrainConfig(**BASE, rule="fa", bits=3)])
    with pytest.raises(ConfigError, match="update 'stochastic' does not stack"):
        train_many([TrainConfig(**{**BASE, "update": "stochastic", "recipe": None}, bits=2)])
    with pytest.raises(ConfigError, match="recipe 'hwa' does not stack \\(it trains with an update of its own\\)"):
        train_many([TrainConfig(**{**BASE, "update": "qat", "recipe": "hwa", "device": "pcm-aihwkit"}, bits=2)])


OWN = [  # (update, rule, config fields per variant): devices the stack's kernels do not model
    ("nearest", "bp", [{"bits": b, "range": r, "quant": q, "device_set": "read_noise_rel=0.05,program_noise_rel=0.03"}
                       for b, r, q in GRID[:3]] + [{"bits": 4, "w_max": 1e30, "range": "global", "quant": "asymm",
                                                    "device_set": "read_noise_rel=0.05,program_noise_rel=0.03"}]),
    ("nearest", "sg", [{"bits": b, "device_set": f"stuck_off_rate=0.02,g_d2d_rel={s}"} for b, s in ((3, 0.1), (5, 0.0))]),
    ("qat", "bp", [{"device": "rram-4bit", "bits": b, "device_set": f"read_noise_rel={r}"} for b in (2, 3)
                   for r in (0.0, 0.05)]),
    ("qat", "fa", [{"device": "ideal", "bits": b, "adc_bits": 8} for b in (2, 4)]),
    ("qat", "hsic", [{"device": "pcm-aihwkit", "bits": b} for b in (2, 3)]),
]


@pytest.mark.parametrize("update,rule,variants", OWN, ids=lambda v: v if isinstance(v, str) else "")
def test_variants_on_their_own_crossbars_train_as_alone(update, rule, variants):
    # noisy, faulty, drifting or ADC devices and update qat: each variant programs and reads its
    # own crossbars inside the stack, and every variant (a diverging one too) equals its run alone
    base = {**BASE, "update": update, "rule": rule} | ({"recipe": None} if update == "qat" else {})
    cfgs = [TrainConfig(**{**base, **v}) for v in variants]
    many = train_many(cfgs, keep_trainer=True)
    for cfg, m in zip(cfgs, many):
        _same(train(cfg, keep_trainer=True), m)
    if update == "nearest" and rule == "bp":
        assert [m["status"] for m in many][-1] == "diverged"


@pytest.mark.parametrize("quant", ["asymm", "symm"])
@pytest.mark.parametrize("rng", ["global", "local"])
def test_round_program_kernel_matches_quantize_and_crossbar_program(quant, rng):
    # reference: the seed quantizer (numpy path) then Crossbar.program, variant by variant
    r = np.random.default_rng(3)
    bits = np.array([2, 3, 4, 5, 6, 8])
    K, rows, out = len(bits), 70, 9
    W = (r.standard_normal((K, rows, out)) * 0.6).astype(np.float32)
    W[1] = 0.25                                       # a degenerate (constant) tensor
    W[2, 3, 4] = 7.0                                  # clipped under a global range
    b = (r.standard_normal((K, out)) * 0.3).astype(np.float32)
    dev_bits = [None, 4, 5, 6, 7, 8]                  # analog, and level devices
    devices = [Device.preset("ideal") if d is None else Device.preset("ideal").with_(bits=d) for d in dev_bits]
    lo, hi = np.full(K, -1.0), np.full(K, 1.0)
    w32, g32 = np.empty_like(W), np.empty_like(W)
    alpha32, beta32 = np.empty((K, out), np.float32), np.empty((K, out), np.float32)
    has_beta, clipped = np.empty(K, np.bool_), np.empty(K, np.int64)
    bad_w, bad_b = np.empty(K, np.int64), np.empty(K, np.int64)
    Wk, bk = W.copy(), b.copy()
    n_levels = np.array([0 if d.levels() is None else len(d.levels()) for d in devices])
    round_program_stack(Wk, bk, lo, hi, bits, np.full(K, quant == "symm"), np.full(K, rng == "local"), n_levels,
                        np.array([d.window_us for d in devices]), np.array([d.g_min_us for d in devices]),
                        w32, g32, alpha32, beta32, has_beta, clipped, bad_w, bad_b)
    mp_fast = mp.FAST_MIN
    try:
        mp.FAST_MIN = None   # the numpy formulas
        for k in range(K):
            Wr = mp.quantize(W[k], int(bits[k]), quant, rng, (-1.0, 1.0))
            br = mp.quantize(b[k], int(bits[k]), quant, rng, (-1.0, 1.0))
            assert np.array_equal(Wk[k], Wr) and np.array_equal(bk[k], br)
            xb = Crossbar(devices[k], quant=quant, quant_bits=int(bits[k]), range=rng, w_range=(-1.0, 1.0),
                          gain="layer", seed=0).program(Wr)
            assert np.array_equal(w32[k], xb.read.w_fwd32) and np.array_equal(g32[k], xb.read.g32)
            assert np.array_equal(alpha32[k], xb._alpha32)
            assert has_beta[k] == (xb._beta32 is not None)
            if has_beta[k]:
                assert np.array_equal(beta32[k], xb._beta32)
            assert clipped[k] == xb.stats()["weights_clipped"] and bad_w[k] == -1 and bad_b[k] == -1
    finally:
        mp.FAST_MIN = mp_fast


@pytest.mark.parametrize("rng", ["global", "local"])
def test_fused_adadelta_kernel_is_the_optimizer_step_then_rounding(rng):
    # adadelta_round_program_stack == Adadelta.step on the stack, then round_program_stack; also
    # without net conductances (g32 of size 0), for a variant whose step gives a NaN weight, one
    # whose bias becomes infinite, a constant (degenerate) tensor and level devices; the tensor is
    # larger than the kernel's chunk
    r = np.random.default_rng(5)
    K, rows, out = 7, 410, 7
    W = (r.standard_normal((K, rows, out)) * 0.5).astype(np.float32)
    b = (r.standard_normal((K, out)) * 0.3).astype(np.float32)
    gW = (r.standard_normal((K, rows, out)) * 0.1).astype(np.float32)
    gb = (r.standard_normal((K, out)) * 0.1).astype(np.float32)
    gW[3, 2, 1] = np.nan
    W[4], gW[4] = 0.375, 0.0                       # stays constant
    W[6, 5, 5], gb[5, 2] = 3.0, np.inf              # clipped (global); an infinite bias step
    consts = (np.full(K, -1.0), np.full(K, 1.0), np.array([2, 3, 5, 8, 4, 6, 7]),
              np.array([False, True, False, True, False, True, False]), np.full(K, rng == "local"),
              np.array([0, 0, 0, 0, 16, 64, 256]), np.full(K, 100.0), np.full(K, 1.0))

    def outputs(with_g=True):
        return [np.empty_like(W), np.empty_like(W) if with_g else np.zeros((K, 0, 0), np.float32),
                np.empty((K, out), np.float32), np.empty((K, out), np.float32), np.empty(K, np.bool_),
                np.empty(K, np.int64), np.empty(K, np.int64), np.empty(K, np.int64)]

    Wr, br = W.copy(), b.copy()
    opt = Adadelta([Wr, br], lr=0.7)
    for _ in range(2):   # a second step sees non-zero running averages
        opt.step([gW, gb])
        ref = outputs()
        round_program_stack(Wr, br, *consts, *ref)
    for with_g in (True, False):
        Wf, bf = W.copy(), b.copy()
        state = Adadelta([Wf, bf], lr=0.7)
        for _ in range(2):
            got = outputs(with_g)
            adadelta_round_program_stack(Wf, bf, gW, gb, state.sq[0], state.acc[0], state.sq[1], state.acc[1],
                                         *state.scalars(), *consts, *got)
        assert np.array_equal(Wf, Wr, equal_nan=True) and np.array_equal(bf, br, equal_nan=True)
        assert np.array_equal(state.sq[0], opt.sq[0], equal_nan=True)
        assert got[-2][3] == ref[-2][3] == (0 if rng == "local" else 2 * out + 1)   # the first NaN weight
        assert got[-1][5] == ref[-1][5] >= 0 and np.array_equal(bf[5], br[5], equal_nan=True)
        assert (got[-2][[0, 1, 2, 4, 6]] == -1).all() and (got[-1][[0, 1, 2, 4, 6]] == -1).all()
        for k in (0, 1, 2, 4, 6):                                  # the finite variants: all outputs
            for a, e in zip(got, ref):
                if a.size and a.ndim > 1:
                    assert np.array_equal(a[k], e[k])
                elif a.ndim == 1:
                    assert a[k] == e[k]


def test_round_kernel_names_the_first_non_finite_weight():
    W = np.zeros((2, 4, 3), np.float32)
    W[0, 1, 2] = np.nan
    W[1, 2, 0] = np.inf     # global asymm: inf clips to the top level (finite); local: all NaN
    b = np.zeros((2, 3), np.float32)
    out = [np.empty_like(W), np.empty_like(W), np.empty((2, 3), np.float32), np.empty((2, 3), np.float32),
           np.empty(2, np.bool_), np.empty(2, np.int64), np.empty(2, np.int64), np.empty(2, np.int64)]
    round_program_stack(W, b, np.full(2, -1.0), np.full(2, 1.0), np.array([3, 3]), np.zeros(2, bool),
                        np.array([False, True]), np.zeros(2, np.int64), np.ones(2), np.zeros(2), *out)
    assert out[-2][0] == 1 * 3 + 2 and out[-2][1] == 0


SPEC = """
name = "stacked"
[base]
network = "digits-mlp"
dataset = "digits"
update = "nearest"
recipe = "seed"
device = "ideal"
epochs = 2
train_limit = 300
test_limit = 100
eval_train = false
[grid]
rule = ["bp", "hsic"]
bits = [2, 4]
range = ["global", "local"]
"""


def _exp(tmp_path, text=SPEC):
    p = tmp_path / "s.toml"
    p.write_text(textwrap.dedent(text))
    return Experiment.load(p)


def test_sweep_groups_device_side_variants_and_says_why_others_are_alone(tmp_path):
    exp = _exp(tmp_path, SPEC.replace('update = "nearest"\n', "").replace(
        'rule = ["bp", "hsic"]', 'rule = ["bp", "hsic"]\nupdate = ["nearest", "stochastic"]'))
    groups = plan_groups(exp.expand())
    stacks = [g for g in groups if g.stacked]
    assert len(stacks) == 2 and all(len(g.runs) == 4 for g in stacks)
    alone = [g for g in groups if not g.stacked]
    assert len(alone) == 8 and all("update 'stochastic' does not stack" in g.why for g in alone)
    assert all(not g.stacked for g in plan_groups(exp.expand(), "off"))
    lines = []
    run_sweep(exp, tmp_path / "none.h5", workers=2, dry_run=True, print_fn=lines.append)
    text = "\n".join(lines)
    assert "stacks are split by" in text and "rule" in text and "8 run(s) alone: update 'stochastic'" in text
    assert "in 10 task(s) (2 stacked)" in lines[-1]
    qat = _exp(tmp_path, SPEC.replace('update = "nearest"', 'update = "qat"').replace('recipe = "seed"', ""))
    assert [len(g.runs) for g in plan_groups(qat.expand())] == [4, 4]   # qat stacks too
    # a stack trains on one worker: fewer groups than workers cut the largest ones
    assert [len(g.runs) for g in plan_groups(qat.expand(), "auto", 2)] == [4, 4]
    assert [len(g.runs) for g in plan_groups(qat.expand(), "auto", 4)] == [2, 2, 2, 2]
    assert [len(g.runs) for g in plan_groups(qat.expand()[:4], "auto", 3)] == [1, 1, 2]
    with pytest.raises(ConfigError, match="--stack 'maybe': expected one of auto, off"):
        run_sweep(exp, tmp_path / "none.h5", dry_run=True, stack="maybe", print_fn=lines.append)


def test_stacked_sweep_stores_what_unstacked_stores_and_resumes_a_partial_group(tmp_path, monkeypatch):
    monkeypatch.setenv("XBAR_SWEEP_INPROCESS", "1")
    exp = _exp(tmp_path)
    quiet = {"progress": False, "print_fn": lambda s: None, "workers": 1}
    a = tmp_path / "stacked.h5"
    first = run_sweep(exp, a, only={"bits": ["2"], "rule": ["bp"]}, **quiet)
    assert first["done"] == 2 and first["stacks"] == 1
    rest = run_sweep(exp, a, **quiet)
    assert rest["done"] == 6 and rest["stacks"] == 2    # bp's group trains only its 2 missing runs
    b = tmp_path / "alone.h5"
    off = run_sweep(exp, b, stack="off", **quiet)
    assert off["stacks"] == 0
    da, db = store.load(a).set_index("key"), store.load(b).set_index("key")
    db = db.loc[da.index]
    assert list(da["test_accuracy"]) == list(db["test_accuracy"])
    for k in da.index:
        ha, hb = store.history(a, k), store.history(b, k)
        for name in ("test_accuracy", "test_loss", "step_loss", "w_min", "g_max"):
            assert np.array_equal(ha[name], hb[name], equal_nan=True), name
        assert np.array_equal(store.histograms(a, k)[0][0], store.histograms(b, k)[0][0])


def test_cli_refuses_an_unknown_stack_mode(tmp_path, capsys):
    from xbar.cli import main
    p = tmp_path / "s.toml"
    p.write_text(textwrap.dedent(SPEC))
    assert main(["sweep", str(p), "--stack", "sometimes", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--stack: invalid choice: 'sometimes' (choose from 'auto', 'off')" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("output", ["log_softmax", "mse"])
def test_stacked_loss_is_each_slice_loss(output):
    from xbar.nn import loss_and_error
    r = np.random.default_rng(5)
    a = (r.standard_normal((6, 64, 10)) * 3).astype(np.float32)
    y = r.integers(0, 10, 64)
    losses, E = loss_and_error(output, a, y)
    for k in range(6):
        loss, e = loss_and_error(output, a[k], y)
        assert losses[k] == loss and np.array_equal(E[k], e)


def test_a_stack_is_one_dask_task_and_stores_what_local_workers_store(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    exp = _exp(tmp_path, SPEC.replace('rule = ["bp", "hsic"]', 'rule = ["bp"]'))
    quiet = {"progress": False, "print_fn": lambda s: None}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        res = run_sweep(exp, tmp_path / "dask.h5", cluster=cluster.scheduler_address, **quiet)
    assert res["done"] == 4 and res["stacks"] == 1
    monkeypatch.setenv("XBAR_SWEEP_INPROCESS", "1")
    run_sweep(exp, tmp_path / "local.h5", workers=1, stack="off", **quiet)
    a, b = store.load(tmp_path / "dask.h5").set_index("key"), store.load(tmp_path / "local.h5").set_index("key")
    assert list(a["test_accuracy"]) == list(b.loc[a.index, "test_accuracy"])
