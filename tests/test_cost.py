"""The hardware cost model: exact counts against a brute-force placement, estimates, presets, CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from xbar import cost as xc
from xbar.errors import ConfigError

# ---- a slow, obvious reference: place every kept cell on a physical array, one by one ------------

def brute_counts(mask, tile, *, planes=1, per_cell=2, bias_row=False, has_bias=True, repack=True):
    R, C = tile
    n_in, n_out = mask.shape
    bias = bias_row and has_bias
    live_cols = [j for j in range(n_out) if any(mask[i, j] for i in range(n_in))]
    slot = {}        # (row, col) -> (array id, row slot, col slot); row -1 is the bias row
    if repack:
        for j0 in range(0, len(live_cols), C):
            chunk = live_cols[j0:j0 + C]
            rows = [i for i in range(n_in) if any(mask[i, j] for j in chunk)] + ([-1] if bias else [])
            for p, i in enumerate(rows):
                for c, j in enumerate(chunk):
                    slot[(i, j)] = ((j0 // C, p // R), p % R, c)
    else:
        rows = list(range(n_in)) + ([-1] if bias else [])
        for p, i in enumerate(rows):
            for j in range(n_out):
                slot[(i, j)] = ((j // C, p // R), p % R, j % C)
    kept = [(i, j) for i in range(n_in) for j in range(n_out) if mask[i, j]]
    kept += [(-1, j) for j in live_cols] if bias else []
    arrays, rows_used, cols_used = set(), set(), set()
    for i, j in kept:
        a, r, c = slot[(i, j)]
        arrays.add(a)
        if i >= 0:
            rows_used.add((a, r))
        cols_used.add((a, c, j))
    assert len({slot[k] for k in kept}) == len(kept)        # no two cells share a device
    partials = {j: len({a for (a, c, jj) in cols_used if jj == j}) for j in live_cols}
    return {"tiles": planes * len(arrays), "cells": len(kept), "devices": per_cell * planes * len(kept),
            "dac_conversions": planes * len(rows_used), "adc_conversions": planes * len(cols_used),
            "partial_sum_adds": sum(planes * k - 1 for k in partials.values()),
            "gain_mults": len(live_cols), "bias_adds": len(live_cols) if has_bias and not bias_row else 0,
            "array_reads": planes * len(arrays)}


SHAPES = [(1, 1), (5, 3), (17, 9), (40, 70), (64, 64), (65, 33), (130, 20)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [1.0, 0.5, 0.05])
@pytest.mark.parametrize("repack", [True, False])
def test_counts_match_brute_force(shape, density, repack):
    rng = np.random.default_rng([*shape, int(100 * density), repack])
    mask = rng.random(shape) < density
    mask[rng.integers(shape[0]), rng.integers(shape[1])] = True   # never empty
    if shape[0] > 8:
        mask[: shape[0] // 3] = False                 # dead inputs
    if shape[1] > 4:
        mask[:, 1::3] = False                          # dead outputs, scattered over chunks
    for tile in [(8, 4), (16, 16), (64, 64), (3, 7)]:
        for planes, per_cell, bias_row in [(1, 2, False), (2, 1, True), (1, 2, True)]:
            p = xc.Periphery(tile=tile, devices_per_cell=per_cell, planes=planes, bias_row=bias_row)
            got = xc.layer_counts(mask, p, repack=repack)
            want = brute_counts(mask, tile, planes=planes, per_cell=per_cell, bias_row=bias_row, repack=repack)
            assert {k: got[k] for k in want} == want, (tile, planes, bias_row)


def test_repacking_releases_arrays_that_scattered_pruning_cannot():
    mask = np.ones((128, 128), bool)
    mask[:, ::2] = False                     # every other output gone: no 64x64 array is empty ...
    p = xc.Periphery(tile=(64, 64))
    assert xc.layer_counts(mask, p, repack=False)["tiles"] == 4
    assert xc.layer_counts(mask, p)["tiles"] == 2        # ... but re-packed, 64 columns fill one chunk
    scattered = np.random.default_rng(0).random((128, 128)) < 0.1   # 90 % unstructured sparsity
    assert xc.layer_counts(scattered, p)["tiles"] == 4
    assert xc.layer_counts(scattered, p)["devices"] == 2 * int(scattered.sum())


def test_unpruned_counts_equal_the_simulator():
    from xbar import Crossbar, Device
    for shape, tile in [((100, 30), (64, 16)), ((64, 64), (64, 64)), ((7, 130), (4, 64))]:
        xb = Crossbar(Device.preset("ideal"), tile=tile, adc_bits=8, seed=0)
        W = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
        xb.program(W, np.zeros(shape[1], np.float32))
        xb.mvm(np.ones((1, shape[0]), np.float32))
        s = xb.stats()
        c = xc.layer_counts(np.ones(shape, bool), xc.Periphery.from_crossbar(xb))
        assert (c["tiles"], c["devices"], c["adc_conversions"]) == (s["tiles"], s["devices"],
                                                                    s["adc_conversions"])
        assert c["device_capacity"] == s["device_capacity"]


def test_lenet_totals_by_hand():
    c = xc.network_cost([(784, 300), (300, 100), (100, 10)], xc.Periphery(tile=(64, 64)))
    t = c["total"]
    # 13x5 + 5x2 + 2x1 arrays; ADC: 13*300 + 5*100 + 2*10; DAC: 784*5 + 300*2 + 100*1
    assert t["tiles"] == 77 and t["adc_conversions"] == 4420 and t["dac_conversions"] == 4620
    assert t["devices"] == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert t["partial_sum_adds"] == 300 * 12 + 100 * 4 + 10 * 1
    assert t["gain_mults"] == t["bias_adds"] == 410
    assert c["adc_bits"] == 8 and c["adc_bits_assumed"]


def test_empty_layer_costs_nothing():
    c = xc.layer_counts(np.zeros((10, 10), bool))
    assert all(c[k] == 0 for k in xc.COUNTS)
    k = xc.CostConstants.preset()
    assert xc.layer_estimates(c, xc.Periphery(), k)["energy_pj"] == 0


def test_estimates_follow_the_documented_formulas():
    k = xc.CostConstants.preset()
    b = 8
    e = k.adc_walden_fj * 1e-3 * 2 ** b + 0.5 * 10 ** ((6.02 * b + 1.76 - k.adc_schreier_db) / 10) * 1e12
    assert k.adc_pj(b) == pytest.approx(e)
    assert 1.0 < k.adc_pj(8) < 2.0 and k.adc_pj(4) < k.adc_pj(6) < k.adc_pj(8) < k.adc_pj(12)
    p = xc.Periphery(tile=(16, 16), adc_bits=6, dac_bits=4, g_mid_us=2.0)
    c = xc.layer_counts(np.ones((40, 20), bool), p)
    est = xc.layer_estimates(c, p, k)
    assert est["adc_pj"] == pytest.approx(c["adc_conversions"] * k.adc_pj(6))
    assert est["dac_pj"] == pytest.approx(c["dac_conversions"] * 4 * k.dac_pj_per_bit)
    assert est["digital_pj"] == pytest.approx((c["partial_sum_adds"] + c["bias_adds"]) * k.add_pj
                                              + c["gain_mults"] * k.mult_pj)
    assert est["array_pj"] == pytest.approx(c["devices"] * k.read_v ** 2 * 2.0 * k.read_ns * 1e-3)
    assert est["energy_pj"] == pytest.approx(sum(est[x] for x in ("array_pj", "dac_pj", "adc_pj",
                                                                  "digital_pj")))
    # 3 row arrays of 16 -> adder tree depth 2; 16 columns per array on one ADC
    assert est["latency_ns"] == pytest.approx(k.dac_ns + k.read_ns + 16 * k.adc_ns + 3 * k.digital_ns)
    cell = k.cell_area_f2 * (k.feature_nm * 1e-6) ** 2
    assert est["area_mm2"] == pytest.approx(c["tiles"] * (16 * 16 * 2 * cell + k.adc_area(6)
                                                          + 16 * 4 * k.dac_area_mm2_per_bit))


def test_pruning_never_raises_a_count():
    rng = np.random.default_rng(3)
    mask = np.ones((200, 90), bool)
    p = xc.Periphery(tile=(32, 32))
    k = xc.CostConstants.preset()
    prev = xc.layer_counts(mask, p)
    for _ in range(30):   # remove whole rows (columns may re-chunk, but never cost more)
        mask[rng.integers(200)] = False
        c = xc.layer_counts(mask, p)
        for key in ("tiles", "devices", "dac_conversions", "adc_conversions"):
            assert c[key] <= prev[key]
        prev = c
    assert xc.layer_estimates(prev, p, k)["energy_pj"] < xc.layer_estimates(
        xc.layer_counts(np.ones((200, 90), bool), p), p, k)["energy_pj"]


# ---- constants: presets, validation, search path ------------------------------------------------

def test_preset_found_and_cited():
    assert "default-45nm" in xc.CostConstants.presets()
    k = xc.CostConstants.preset("default-45nm")
    assert "Horowitz" in k.source and "Murmann" in k.source
    assert k.add_pj == 0.1 and k.mult_pj == 3.1


def test_cost_presets_do_not_show_up_as_devices():
    from xbar import Device
    assert "default-45nm" not in Device.presets() and "costs" not in Device.presets()


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match="unknown cost preset 'default-45'.*did you mean 'default-45nm'"):
        xc.CostConstants.preset("default-45")


def test_bad_constant_names_file_and_field(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('adc_walden_fj = -1\n')
    with pytest.raises(ConfigError, match=r"mine.toml: adc_walden_fj = -1.0 is out of range"):
        xc.CostConstants.preset(str(f))
    f.write_text('add_pj = 1\nadd_pjj = 2\n')
    with pytest.raises(ConfigError, match="did you mean 'add_pj'"):
        xc.CostConstants.from_toml(f)


def test_user_presets_on_xbar_path(tmp_path, monkeypatch):
    d = tmp_path / "devices" / "costs"
    d.mkdir(parents=True)
    (d / "cheap-adc.toml").write_text('adc_walden_fj = 1.0\n')
    monkeypatch.setenv("XBAR_PATH", str(tmp_path))
    assert "cheap-adc" in xc.CostConstants.presets()
    assert xc.CostConstants.preset("cheap-adc").adc_walden_fj == 1.0


# ---- command line -----------------------------------------------------------------------------------

def _cli(argv):
    parser = argparse.ArgumentParser(prog="xbar")
    from xbar.cli.prune import add_cost
    add_cost(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_json(capsys):
    assert _cli(["cost", "--network", "lenet-300-100", "--dataset", "fmnist", "--device", "ideal",
                 "--adc-bits", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"]["tiles"] == 77 and len(out["layers"]) == 3 and out["adc_bits"] == 6
    assert not out["adc_bits_assumed"]


def test_cli_table(capsys):
    assert _cli(["cost", "--network", "digits-mlp", "--dataset", "digits", "--tile", "16x16"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "ADC conv" in out and "estimates" in out


def test_cli_bad_input_is_a_config_error():
    with pytest.raises(ConfigError, match="tile"):
        _cli(["cost", "--network", "digits-mlp", "--tile", "0x4"])
    with pytest.raises(ConfigError, match="unknown cost preset"):
        _cli(["cost", "--network", "digits-mlp", "--costs", "nope"])


def test_log2_depth_helper_agrees():
    p = xc.Periphery(tile=(4, 4))
    c = xc.layer_counts(np.ones((17, 3), bool), p)     # 5 arrays per column
    assert c["max_partials"] == 5
    est = xc.layer_estimates(c, p, xc.CostConstants.preset())
    k = xc.CostConstants.preset()
    assert est["latency_ns"] == pytest.approx(k.dac_ns + k.read_ns + 3 * k.adc_ns
                                              + (math.ceil(math.log2(5)) + 1) * k.digital_ns)
