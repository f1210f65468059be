"""`xbar prune` and `xbar cost`: pruning against the crossbar, and what an inference costs."""

from __future__ import annotations

import sys

import numpy as np

from .options import (
    Progress,
    add_config_options,
    add_output_options,
    check_out,
    config_from_args,
    print_json,
    print_table,
)

# The train options `xbar cost` takes (what the counts depend on).
COST_TRAIN_FIELDS = ("network", "dataset", "device", "bits", "update", "tile", "adc_bits", "dac_bits")


def _train_fields_without_init():
    from ..train import TrainConfig
    return tuple(f for f in TrainConfig.fields() if f.name != "init")   # prune has its own --init


def cmd_prune(args) -> int:
    from ..cost import SUMMARY
    from ..prune import FIELDS, PruneConfig, prune
    from ..train import TrainConfig
    if getattr(args, "out", None) is not None:
        check_out(args.out)      # before any work
    tcfg = TrainConfig.from_dict(config_from_args(args, _train_fields_without_init()),
                                 file="command line").resolve()
    pcfg = PruneConfig.from_dict(config_from_args(args, FIELDS), file="command line").resolve()
    quiet = args.json or args.quiet

    def on_round(e):
        if not quiet:
            print(f"round {e['round']:>3}  target {e['target']:.3f}  sparsity {100 * e['sparsity']:5.1f}%  "
                  f"tiles {e['tiles']}  energy {e['energy_pj']:.0f} pJ  test {e['test_accuracy']:6.2f}%",
                  file=sys.stderr, flush=True)

    result = prune(tcfg, pcfg, on_epoch=Progress(tcfg.epochs, quiet), on_round=on_round,
                   keep_trainer=bool(args.out))
    trainer = result.pop("_trainer", None)
    if args.out and trainer is not None:
        from ..checkpoint import save
        save(args.out, trainer, tcfg, result)
    if args.json:
        print_json(result)
        return 0 if result["status"] == "ok" else 1
    print(f"{tcfg.network} on {tcfg.dataset}, method {pcfg.method} ({pcfg.schedule}"
          + (f", {pcfg.rounds} rounds" if pcfg.schedule == "iterative" and pcfg.method != "hardware" else "")
          + f"): status {result['status']}" + (f" ({result['message']})" if result.get("message") else ""))
    if "accuracy_before" not in result:
        return 1
    a0, a1 = result["accuracy_before"], result["accuracy_after"]
    print(f"test accuracy {a0:.2f}% -> " + ("-" if a1 is None else f"{a1:.2f}% ({a1 - a0:+.2f})")
          + f"; sparsity {100 * result['sparsity']:.1f}% (layers "
          + ", ".join(f"{100 * s:.1f}" for s in result["sparsity_layers"]) + ")")
    b, a = result["hardware_before"], result["hardware_after"]
    rows = [(k, f"{b[k]:.6g}", f"{a[k]:.6g}", f"{100 * result['saved'][k]:.1f}%") for k in SUMMARY]
    rows.append(("widths", "-".join(map(str, b["widths"])), "-".join(map(str, a["widths"])), ""))
    print_table(("per inference", "before", "after", "saved"), rows)
    return 0 if result["status"] == "ok" else 1


def cmd_cost(args) -> int:
    from ..cost import CostConstants, Periphery, net_cost
    from ..train import FIELDS as TRAIN_FIELDS
    from ..train import TrainConfig
    constants = CostConstants.preset(args.costs)
    if args.run:
        from ..checkpoint import load
        run = load(args.run)
        net = run.network()
        cfg = TrainConfig.from_dict({k: v for k, v in run.config.items() if k in COST_TRAIN_FIELDS})
        cost = net_cost(net, Periphery.from_config(cfg), constants, repack=not args.no_repack)
        title = f"{args.run}: {run.network_name}"
    else:
        from .. import data as xdata
        from ..nn import NetworkSpec
        fields = [f for f in TRAIN_FIELDS if f.name in COST_TRAIN_FIELDS]
        cfg = TrainConfig.from_dict(config_from_args(args, fields), file="command line").resolve()
        spec = NetworkSpec.preset(cfg.network)
        net = spec.build(int(np.prod(xdata.image_shape(cfg.dataset))), xdata.num_classes(cfg.dataset),
                         np.random.default_rng(0))
        cost = net_cost(net, Periphery.from_config(cfg), constants, repack=not args.no_repack)
        title = f"{spec.name} on {cfg.dataset}, device {cfg.device}"
    if args.json:
        print_json(cost)
        return 0
    head = ("layer", "cells", "devices", "tiles", "reads", "DAC conv", "ADC conv", "psum adds", "energy pJ",
            "ADC pJ", "latency ns", "area mm²")

    def row(name, c):
        return (name, c["cells"], c["devices"], c["tiles"], c["array_reads"], c["dac_conversions"],
                c["adc_conversions"], c["partial_sum_adds"], f"{c['energy_pj']:.1f}", f"{c['adc_pj']:.1f}",
                f"{c['latency_ns']:.0f}", f"{c['area_mm2']:.4f}")
    print(f"{title}; tile {cost['tile'][0]}x{cost['tile'][1]}, ADC {cost['adc_bits']} bits"
          + (" (costed default: the simulation's ADC is ideal)" if cost["adc_bits_assumed"] else "")
          + f", DAC {cost['dac_bits']} bits" + (" (costed default)" if cost["dac_bits_assumed"] else "")
          + f"; constants {cost['constants']}; per inference; energy/latency/area are estimates")
    print_table(head, [row(c["name"], c) for c in cost["layers"]] + [row("total", cost["total"])])
    return 0


def add_cost(subparsers) -> None:
    """Register `xbar cost`."""
    from ..cost import DEFAULT_COSTS, CostConstants
    from ..train import FIELDS as TRAIN_FIELDS
    c = subparsers.add_parser("cost", help="hardware counts and energy/latency/area estimates per layer")
    add_config_options(c, [f for f in TRAIN_FIELDS if f.name in COST_TRAIN_FIELDS])
    c.add_argument("--costs", default=DEFAULT_COSTS, help="cost constants: a devices/costs preset or a "
                   f".toml path (presets: {', '.join(CostConstants.presets())})")
    c.add_argument("--run", default=None, help="cost a saved run (.h5, e.g. from xbar prune --out): its "
                   "network, masks and crossbars")
    c.add_argument("--no-repack", action="store_true", help="keep the matrix positions (no re-packing)")
    c.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    c.set_defaults(func=cmd_cost)


def add_prune(subparsers) -> None:
    """Register `xbar prune`: every train option plus the prune options."""
    from ..prune import FIELDS
    c = subparsers.add_parser("prune", help="train, prune against the crossbar, retrain; report hardware saved")
    add_config_options(c, _train_fields_without_init())
    add_config_options(c, FIELDS)
    add_output_options(c, progress="no progress on stderr", out="save the pruned network and device state (.h5)")
    c.set_defaults(func=cmd_prune)
