"""Trained torch models onto crossbars (xbar.interop) and skip connections in xbar's network model.

Every imported network is compared with torch itself: logits on the ideal analog device to float
tolerance; gradients through residual additions and branch layers against torch autograd.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from xbar.errors import ConfigError
from xbar.nn import NetworkSpec

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from xbar.interop import TorchImportError, export, from_torch, to_toml

RTOL = 1e-4   # the bound: max |diff| <= 1e-4 of max |logit|


# ---- models ---------------------------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.Tanh(), nn.Dropout(0.1),
                                  nn.Sequential(nn.Linear(20, 12), nn.Sigmoid()), nn.Linear(12, 10))

    def forward(self, x):
        return self.body(x)


class LeNetBN(nn.Module):
    """LeNet-style, batch norm after every crossbar layer; a 2-channel 9x9 input (not square-friendly)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(4, 6, 2, stride=2), nn.BatchNorm2d(6),
                                      nn.Hardtanh(), nn.AvgPool2d(2))
        self.fc1 = nn.Linear(6, 7)
        self.bn = nn.BatchNorm1d(7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class TinyResNet(nn.Module):
    """Stem, an identity block, a projection block (stride 2), adaptive average pooling, Linear."""

    def __init__(self, cin=1, width=3, classes=4, pool=(2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.fc = nn.Linear(2 * width * pool[0] * pool[1], classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 1.5 - 0.25)   # negative gains too
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _model(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return _randomise_bn(cls(**kw), seed)


def _rel(got, ref) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


CASES = [(MLP, (1, 8, 8), {}), (LeNetBN, (2, 9, 9), {}), (TinyResNet, (1, 8, 8), {}),
         (TinyResNet, (3, 8, 6), {"cin": 3, "pool": (4, 3)})]   # 4x3 maps: an identity pool


# ---- logits -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batchnorm", ["fold", "keep"])
@pytest.mark.parametrize("cls,shape,kw", CASES, ids=["mlp", "lenet-bn", "resnet", "resnet-rgb-nonsquare"])
def test_logits_match_torch_on_the_ideal_device(cls, shape, kw, batchnorm):
    model = _model(cls, **kw)
    x = torch.rand((7,) + shape, generator=torch.Generator().manual_seed(1))
    net = from_torch(model, x[:2], "ideal", batchnorm=batchnorm)
    assert all(layer.crossbar is not None for layer in net.layers)
    with torch.no_grad():
        ref = model(x).double().numpy()
    assert _rel(net.predict(x.numpy().reshape(7, -1)), ref) <= RTOL


def test_float_update_keeps_weights_digital_and_matches():
    model = _model(TinyResNet)
    x = torch.rand(5, 1, 8, 8)
    net = from_torch(model, (1, 8, 8), update="float")
    assert all(layer.crossbar is None for layer in net.layers)
    with torch.no_grad():
        assert _rel(net.predict(x.numpy().reshape(5, -1)), model(x).double().numpy()) <= 1e-5


def test_resnet_maps_to_add_and_branch_layers():
    net = from_torch(_model(TinyResNet), (1, 8, 8), update="float")
    kinds = [e["kind"] + ("*" if e.get("branch") else "") for e in net.spec_data["data"]["layers"]]
    assert kinds == ["conv", "conv", "conv", "add", "conv*", "conv", "conv", "add", "avgpool", "flatten"]
    adds = [e for e in net.spec_data["data"]["layers"] if e["kind"] == "add"]
    assert [(a["from"], a["activation"]) for a in adds] == [(0, "relu"), (4, "relu")]
    # the written TOML is a valid spec that builds the same network
    spec = NetworkSpec.from_dict(__import__("tomllib").loads(to_toml(net.spec_data["data"])))
    rebuilt = spec.build(64, 4, np.random.default_rng(0))
    assert [repr(a).split(", float")[0] for a in rebuilt.layers] == [repr(b).split(", float")[0] for b in net.layers]


def test_noisy_device_and_adc_stay_close_and_calibrate_through_skips():
    model = _model(TinyResNet)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    net = from_torch(model, x, "rram-4bit", adc_bits=8, calibration=x.numpy().reshape(64, -1))
    assert all(layer.crossbar.adc_bits == 8 and layer.crossbar.read.adc_fs for layer in net.layers)
    with torch.no_grad():
        ref = model(x).double().numpy()
    err = _rel(net.predict(x.numpy().reshape(64, -1)), ref)
    assert 1e-4 < err < 0.5   # noisy, but the same function


# ---- gradients through residual additions and branches, against torch autograd -----------------------------

def _grads_torch(model, x, y):
    model.train()
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.item()


def test_backprop_through_residual_and_branch_matches_autograd():
    from xbar.train.rules import make_rule
    model = _model(TinyResNet, seed=3)
    net = from_torch(model, (1, 8, 8), update="float", batchnorm="keep")
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    ref_loss = _grads_torch(model, x, y)
    out, caches = net.forward(x.numpy().reshape(6, -1), train=True)
    loss, e = net.loss(out, y.numpy())
    assert abs(loss - ref_loss) < 1e-5
    deltas = make_rule("bp").deltas(net, caches, e, y.numpy())
    names = net.torch_layers
    for layer, d, c, info in zip(net.layers, deltas, caches, names):
        grads = layer.grads(d, c)
        w = model.get_submodule(info["module"]).weight.grad.numpy()
        ref = w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]) if layer.kind == "conv" else w.T
        if info["flatten_maps"]:   # xbar's rows are channels last
            ref = ref[np.arange(ref.shape[0]).reshape(info["flatten_maps"]).transpose(1, 2, 0).ravel()]
        np.testing.assert_allclose(grads[0], ref, rtol=1e-3, atol=1e-6 * np.abs(ref).max() + 1e-7)
        if layer.bn is not None:
            bn = model.get_submodule(info["bn"]["module"])
            np.testing.assert_allclose(grads[-2], bn.weight.grad.numpy(), rtol=1e-3, atol=1e-6)
            np.testing.assert_allclose(grads[-1], bn.bias.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_other_rules_run_on_residual_networks():
    from xbar.train.rules import make_rule
    net = from_torch(_model(TinyResNet), (1, 8, 8), update="float")
    X = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    y = np.array([0, 1, 2, 3, 0])
    for name in ("fa", "dfa"):
        rule = make_rule(name)
        rule.setup(net, np.random.default_rng(0))
        out, caches = net.forward(X)
        _, e = net.loss(out, y)
        deltas = rule.deltas(net, caches, e, y)
        for layer, d in zip(net.layers, deltas):
            assert d.shape[1] == layer.n_out and np.isfinite(d).all()


def test_training_a_residual_spec_reduces_the_loss():
    from xbar.train import train
    r = train({"network": "resnet-tiny", "dataset": "fmnist", "epochs": 1, "train_limit": 128, "test_limit": 64,
               "batch_size": 32, "eval_train": False, "update": "qat", "bits": 4, "adc_bits": 8})
    assert r["status"] == "ok" and r["history"][0]["step_loss"] < 2.5


# ---- the spec's skip connections: errors ------------------------------------------------------------------

def _spec(layers):
    return {"input": [1, 6, 6], "layers": layers}


CONV = {"kind": "conv", "filters": 2, "kernel": 3, "padding": 1}


@pytest.mark.parametrize("layers,text", [
    ([CONV, CONV, {"kind": "add", "from": 3}], "expected an earlier [[layers]] index"),
    ([CONV, {"kind": "maxpool", "size": 1}, CONV, {"kind": "add", "from": 0}], "use from = 1"),
    ([CONV, dict(CONV, filters=3), {"kind": "add", "from": 0}], "the two paths must give the same shape"),
    ([CONV, {"kind": "add", "from": 0}], "the output of the layer this addition runs in"),
    ([dict(CONV, branch=True), CONV], "no later add reads it"),
    ([CONV, dict(CONV, branch=True), {"kind": "maxpool"}, CONV], "follows the branch layer"),
    ([{"kind": "add", "from": -1}], "must follow a conv or dense layer"),
    ([CONV, {"kind": "add"}], "layers[1].from is required"),
])
def test_bad_skip_connections_are_one_clear_error(layers, text):
    with pytest.raises(ConfigError, match=None) as exc:
        NetworkSpec.from_dict(_spec(layers + [{"kind": "flatten"}]))
    assert text in str(exc.value) and "\n" not in str(exc.value)


def test_an_add_from_the_input_transposes_the_datasets_rows():
    spec = NetworkSpec.from_dict({"input": [2, 3, 3], "layers": [dict(CONV, filters=2, activation="identity"),
                                                                 {"kind": "add", "from": -1, "activation": "identity"},
                                                                 {"kind": "flatten"}]})
    net = spec.build(18, 2, np.random.default_rng(0))
    X = np.random.default_rng(1).random((3, 18), dtype=np.float32)
    conv = net.layers[0]
    plain = conv.forward(X, False, [(np.zeros((3, 18), np.float32), None)])[0]
    hwc = X.reshape(3, 2, 3, 3).transpose(0, 2, 3, 1).reshape(3, -1)
    np.testing.assert_allclose(net.layers[0].forward(X, False, [(hwc, None)])[0], plain + hwc, rtol=1e-6)
    z, _ = net._run(X, False, False)
    np.testing.assert_allclose(z, net.layers[1].forward(plain + hwc, False)[0], rtol=1e-6)


# ---- refused models -------------------------------------------------------------------------------------------

class _Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Sequential(nn.GELU()), nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 2, 3, groups=2)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.c(x).flatten(1))


class _Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 4)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x.flatten(1))
        return self.fc(torch.cat([h, h], 1))


class _PreAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.c2 = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 64, 3)

    def forward(self, x):
        h = self.c1(x)
        h = self.c2(h) + h
        return self.fc(F.relu(self.bn(h)).flatten(1))


class _Branchy(nn.Module):   # a shortcut of two convolutions
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.s1, self.s2 = (nn.Conv2d(1 if i in (0, 2) else 2, 2, 3, padding=1) for i in range(4))
        self.fc = nn.Linear(128, 3)

    def forward(self, x):
        return self.fc((self.c2(self.c1(x)) + self.s2(self.s1(x))).flatten(1))


@pytest.mark.parametrize("cls,text", [
    (_Gelu, "'body.2.0' (GELU): not supported"),
    (_Grouped, "'c' (Conv2d): groups = 2"),
    (_Cat, "(cat): not supported"),
    (_PreAct, "'bn' (BatchNorm): does not act on a Linear/Conv2d's outputs"),
    (_Branchy, "its shortcut is"),
])
def test_unsupported_models_are_refused_with_path_type_and_the_list(cls, text):
    torch.manual_seed(0)
    with pytest.raises(TorchImportError) as exc:
        from_torch(cls().eval(), (1, 8, 8) if cls is not _Grouped else (2, 8, 8))
    msg = str(exc.value)
    assert text in msg and "supported: Linear, Conv2d" in msg and "\n" not in msg


def test_bad_arguments():
    with pytest.raises(TorchImportError, match="does not run on an input of shape 3x8x8"):
        from_torch(_model(MLP), (3, 8, 8))
    with pytest.raises(TorchImportError, match="unknown option"):
        from_torch(_model(MLP), (1, 8, 8), adc=8)
    with pytest.raises(TorchImportError, match="expected a torch.nn.Module"):
        from_torch("model.pt", (1, 8, 8))


def test_importing_xbar_never_imports_torch():
    code = ("import sys, xbar, xbar.interop, xbar.interop.torch, xbar.interop.commands, xbar.cli; "
            "xbar.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_torch_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(TorchImportError, match=r"torch is not installed: `pip install torch`"):
        from_torch(object(), (1, 8, 8))


# ---- round trips: export, checkpoints ---------------------------------------------------------------------------

@pytest.mark.parametrize("batchnorm", ["fold", "keep"])
@pytest.mark.parametrize("cls,shape,kw", CASES[:3], ids=["mlp", "lenet-bn", "resnet"])
def test_export_loads_into_the_original_model(cls, shape, kw, batchnorm, tmp_path):
    model = _model(cls, **kw)
    net = from_torch(model, (1,) + shape[1:] if cls is MLP else shape, "ideal", batchnorm=batchnorm)
    x = torch.rand((4,) + shape)
    for shadow in (False, True):
        sd = export(net, tmp_path / "w.pt", shadow=shadow)
        back = _model(cls, seed=9, **kw)
        back.load_state_dict(torch.load(tmp_path / "w.pt"))   # strict: every key, every shape
        back.eval()
        with torch.no_grad():
            assert _rel(back(x).numpy(), model(x).double().numpy()) <= RTOL
        assert set(sd) == set(model.state_dict())


def test_export_names_by_module_and_generic_names():
    model = _model(TinyResNet)
    net = from_torch(model, (1, 8, 8), update="float")
    del net.torch_layers
    generic = export(net)
    assert "layers.0.weight" in generic and "layers.6.bias" in generic and len(net.layers) == 7
    named = export(net, module=TinyResNet(), example_input=(1, 8, 8))
    assert set(named) == set(model.state_dict())


def test_saved_and_loaded_imported_network_reads_the_same(tmp_path):
    from xbar.checkpoint import load, save
    model = _model(TinyResNet)
    net = from_torch(model, (1, 8, 8), "rram-4bit", adc_bits=8, calibration=np.random.default_rng(0).random((32, 64)))
    save(tmp_path / "r.h5", net, {"dataset": "digits"})
    X = np.random.default_rng(1).random((9, 64), dtype=np.float32)
    run = load(tmp_path / "r.h5")
    a, b = run.network().predict(X), run.network().predict(X)
    np.testing.assert_array_equal(a, b)
    assert _rel(a, net.predict(X).astype(np.float64)) < 0.05
    assert run.network_spec["data"]["layers"][3] == {"kind": "add", "from": 0, "activation": "relu"}


def test_init_trainer_starts_from_the_imported_network(tmp_path):
    from xbar.checkpoint import save
    from xbar.interop.commands import init_trainer
    from xbar.train import TrainConfig
    from xbar.train.loop import Trainer
    spec = tmp_path / "net.toml"
    net = from_torch(_model(TinyResNet), (1, 8, 8), "ideal", bits=3, batchnorm="keep", spec_path=spec)
    save(tmp_path / "r.h5", net, {"dataset": "digits"})
    cfg = TrainConfig(network=str(spec), dataset="digits", update="qat", device="ideal", bits=3).resolve()
    tr = Trainer(cfg, 64, 4)
    init_trainer(tr, tmp_path / "r.h5")
    X = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    np.testing.assert_array_equal(tr.net.predict(X), net.predict(X))   # same crossbar seeds
    with pytest.raises(ConfigError, match="do not match network"):
        init_trainer(Trainer(TrainConfig(network="digits-mlp").resolve(), 64, 10), tmp_path / "r.h5")


# ---- the command line, end to end on a tiny model -------------------------------------------------------------------

MODEL_CODE = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 4 * 4, 10)

        def forward(self, x):
            h = F.relu(self.bn(self.conv(x)))
            h = F.relu(self.conv2(h) + h)
            return self.fc(F.max_pool2d(h, 2).flatten(1))
''')


@pytest.fixture
def tiny_files(tmp_path, monkeypatch):
    (tmp_path / "tinymodels.py").write_text(MODEL_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    mod = importlib.import_module("tinymodels")
    torch.manual_seed(0)
    model = _randomise_bn(mod.Tiny())
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    torch.save(model, tmp_path / "whole.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    return tmp_path, model


def _cli(argv, capsys):
    from xbar.cli import main
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_import_eval_cost_export_and_finetune(tiny_files, capsys):
    tmp, _ = tiny_files
    rc, out, err = _cli(["import", "tiny.pt", "--module", "tinymodels:Tiny", "--example-shape", "1,8,8",
                         "--out", "net.h5", "--compare", "--json", "--device", "rram-4bit", "--adc-bits", "8"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["compare"]["images"] == 360 and abs(res["compare"]["torch_accuracy"] - res["test_accuracy"]) < 10
    assert (tmp / "net.toml").is_file()
    rc, out, err = _cli(["eval", "net.h5", "--at", "3600", "--compensate"], capsys)
    assert rc == 0 and "test accuracy" in out, err
    rc, out, err = _cli(["cost", "--run", "net.h5"], capsys)
    assert rc == 0 and "total" in out, err
    rc, out, err = _cli(["export", "net.h5", "eff.pt"], capsys)
    assert rc == 0, err
    back = __import__("tinymodels").Tiny()
    back.load_state_dict(torch.load(tmp / "eff.pt"))
    # the float (ideal) import reproduces the model exactly; train --init starts from it
    rc, out, err = _cli(["import", "tiny.pt", "--module", "tinymodels:Tiny", "--example-shape", "1,8,8",
                         "--out", "ideal.h5", "--compare", "--json"], capsys)
    c = json.loads(out)["compare"]
    assert rc == 0 and c["max_rel_logit_diff"] <= RTOL and c["torch_accuracy"] == c["xbar_accuracy"]
    from xbar.interop.commands import train_init
    r = train_init({"epochs": 1, "train_limit": 64, "test_limit": 64, "update": "qat", "bits": 2, "eval_train": False},
                   "ideal.h5")
    assert r["status"] == "ok" and r["config"]["network"].endswith("ideal.toml")


def test_cli_trusted_whole_module_and_bad_input(tiny_files, capsys):
    rc, _, err = _cli(["import", "whole.pt", "--trust", "--example-shape", "1,8,8", "--out", "w.h5"], capsys)
    assert rc == 0, err
    for argv, text in [
        (["whole.pt", "--example-shape", "1,8,8"], "add --trust"),
        (["tiny.pt", "--example-shape", "1,8,8"], "holds a state_dict: name the model's class with --module"),
        (["text.pt", "--example-shape", "1,8,8"], "not a torch checkpoint"),
        (["tiny.pt", "--module", "tinymodels:Tiny", "--example-shape", "1,8,9", "--dataset", "digits"],
         "has 72 values per sample, but digits samples have 64"),
        (["tiny.pt", "--module", "tinymodels:Tiny", "--example-shape", "1,28,28"], "does not run on an input"),
        (["tiny.pt", "--module", "torch.nn:Linear", "--example-shape", "1,8,8"], "Linear() needs arguments"),
        (["tiny.pt", "--module", "torch.nn:Sequential", "--example-shape", "1,8,8"],
         "the state_dict does not match torch.nn:Sequential: unexpected: conv.weight"),
    ]:
        rc, _, err = _cli(["import"] + argv + ["--out", "x.h5"], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and text in lines[0], (argv, err)
