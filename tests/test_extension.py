"""Extending xbar touches one file: a toy rule, update scheme and pruning criterion (tests/toys/),
each registered by importing its module, run through `xbar train` and `xbar prune`."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from xbar.cli import main
from xbar.prune.criteria import CRITERIA
from xbar.train import RULES, UPDATES, TrainConfig
from xbar.train.recipe import RECIPES

sys.path.insert(0, str(Path(__file__).resolve().parent / "toys"))
FAST = ["--epochs", "1", "--train-limit", "400", "--test-limit", "200", "--json"]


@pytest.fixture()
def toys():
    """Register the three toys for one test, and forget them afterwards."""
    mods = [importlib.reload(importlib.import_module(m)) if m in sys.modules else importlib.import_module(m)
            for m in ("toy_rule", "toy_update", "toy_criterion", "toy_recipe")]
    yield mods
    RULES.unregister("toy-scaled-bp")
    UPDATES.unregister("toy-every-other")
    CRITERIA.unregister("toy-linf")
    RECIPES.unregister("toy-slow")


def run(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_toy_rule_trains_with_its_own_option(toys, capsys):
    rc, r = run(capsys, ["train", "--rule", "toy-scaled-bp", "--toy-scale", "0.5", "--update", "qat",
                         "--bits", "3", *FAST])
    assert rc == 0 and r["status"] == "ok"
    assert r["config"]["rule"] == "toy-scaled-bp" and r["config"]["toy_scale"] == 0.5
    _, bp = run(capsys, ["train", "--rule", "bp", "--update", "qat", "--bits", "3", *FAST])
    _, same = run(capsys, ["train", "--rule", "toy-scaled-bp", "--toy-scale", "1", "--update", "qat",
                           "--bits", "3", *FAST])
    assert same["history"][-1]["loss"] == bp["history"][-1]["loss"]     # scale 1 is bp, bit for bit
    assert r["history"][-1]["loss"] != bp["history"][-1]["loss"]
    assert main(["train", "--rule", "toy-scaled-bp", "--toy-scale", "50", *FAST]) == 2   # its own check
    assert "toy_scale = 50" in capsys.readouterr().err


def test_toy_update_scheme_trains_and_fills_its_defaults(toys, capsys):
    rc, r = run(capsys, ["train", "--update", "toy-every-other", "--bits", "3", *FAST])
    assert rc == 0 and r["status"] == "ok" and r["hardware"]
    assert (r["config"]["quant"], r["config"]["range"], r["config"]["gain"]) == ("device", "local", "column")
    assert main(["train", "--update", "toy-every-other", "--device", "pcm-aihwkit", *FAST]) == 2
    assert "needs device levels" in capsys.readouterr().err


def test_toy_criterion_prunes_units(toys, capsys):
    rc, r = run(capsys, ["prune", "--method", "toy-linf", "--sparsity", "0.5", "--update", "qat", "--bits", "4",
                         "--schedule", "one-shot", "--retrain-epochs", "1", *FAST])
    assert rc == 0 and r["status"] == "ok" and r["prune"]["granularity"] == "unit"
    assert r["hardware_after"]["widths"] == [64, 16, 10]     # half the 32 hidden units
    rc, r = run(capsys, ["prune", "--method", "crossbar", "--criterion", "toy-linf", "--sparsity", "0.3",
                         "--rounds", "1", "--retrain-epochs", "0", "--update", "qat", "--bits", "4", "--tile",
                         "16x16", *FAST])
    assert rc == 0 and r["hardware_after"]["tiles"] < r["hardware_before"]["tiles"]


def test_toy_recipe_fills_its_defaults_and_checks(toys, capsys):
    rc, r = run(capsys, ["train", "--recipe", "toy-slow", "--bits", "3", *FAST])
    assert rc == 0 and r["status"] == "ok"
    assert r["config"]["recipe"] == "toy-slow" and r["config"]["lr"] == 5e-4 and r["config"]["toy_slow_factor"] == 0.5
    assert r["config"]["lr_gamma"] == 0.9     # not set by the recipe: qat's own default
    assert main(["train", "--recipe", "toy-slow", "--toy-slow-factor", "2", "--bits", "3", *FAST]) == 2
    assert "toy_slow_factor = 2" in capsys.readouterr().err
    assert main(["train", "--recipe", "toy-slow", *FAST]) == 2     # its own check: float training
    assert "recipe 'toy-slow' is for device updates" in capsys.readouterr().err


def test_toys_show_in_help_and_are_gone_after(toys, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "toy-scaled-bp" in text and "toy-every-other" in text and "--toy-scale" in text
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    assert "toy-linf" in capsys.readouterr().out


def test_registries_hold_only_the_shipped_ones_without_toys():
    assert tuple(RULES) == ("bp", "fa", "dfa", "hsic", "sg")
    assert tuple(UPDATES) == ("float", "nearest", "stochastic", "qat", "mixed", "pulse")
    assert tuple(CRITERIA) == ("magnitude", "l1", "l2", "activation", "taylor", "random")
    assert tuple(RECIPES) == ("seed", "hwa")
    assert "toy_scale" not in {f.name for f in TrainConfig.fields()}
