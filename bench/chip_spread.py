"""Chip-to-chip spread of a saved run after drift: reprogram its weights on fresh chips and read them later.

`xbar eval run.h5 --at ...` reads the one chip the run was trained on. This script programs the
run's stored (shadow) weights onto `--chips` new crossbars, each with its own seed (its own
programming noise, drift exponents and read noise; same device, tiles, ADC and mapping), calibrates
their ADCs on 256 training images, and reads each at the given times with global drift compensation:
the spread between programmings that aihwkit reports as the std over repeated
program_analog_weights() calls.

    python bench/chip_spread.py run.h5 --at 1d,1y --chips 5 [--compensate exact|read]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import numpy as np


def main(argv=None) -> int:
    from xbar import data as xdata
    from xbar.checkpoint import load
    from xbar.cli import _times
    from xbar.crossbar import Crossbar
    from xbar.train.loop import evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--at", type=_times, default=[86400.0, 31536000.0])
    p.add_argument("--chips", type=int, default=5)
    p.add_argument("--compensate", default="exact", choices=("exact", "read"))
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    run = load(args.run)
    cfg = run.config
    Xtr, _ = xdata.load(cfg["dataset"], "train", cfg.get("data_dir"))
    Xte, yte = xdata.load(cfg["dataset"], "test", cfg.get("data_dir"))
    base = run.network()
    comp = True if args.compensate == "exact" else "read"
    rows = []
    for chip in range(args.chips):
        net = copy.copy(base)
        net.layers = [copy.copy(layer) for layer in base.layers]
        for i, layer in enumerate(net.layers):
            if layer.crossbar is None:
                continue
            old = layer.crossbar
            settings = dict(old.settings.as_dict(), seed=10_000 + 100 * chip + i)
            settings.pop("device", None)
            layer.crossbar = Crossbar(old.device, **settings)
            layer.program()
        net.calibrate(Xtr[:256])
        fresh = evaluate(net, Xte, yte)[1]
        accs = [fresh]
        for t in args.at:
            aged = copy.copy(net)
            aged.layers = [copy.copy(layer) for layer in net.layers]
            for layer in aged.layers:
                if layer.crossbar is not None:
                    layer.crossbar = layer.crossbar.at(float(t), compensate=comp)
            accs.append(evaluate(aged, Xte, yte)[1])
        rows.append(accs)
        print(f"chip {chip}: as programmed {fresh:.2f}  " + "  ".join(
            f"{t:g} s {a:.2f}" for t, a in zip(args.at, accs[1:])), flush=True)
    arr = np.array(rows)
    names = ["as programmed"] + [f"{t:g} s" for t in args.at]
    print("mean ± std over chips: " + "  ".join(f"{n} {m:.2f} ± {s:.2f}"
                                                for n, m, s in zip(names, arr.mean(0), arr.std(0))))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": args.run, "compensate": args.compensate, "times_s": args.at, "chips": rows,
                       "mean": arr.mean(0).tolist(), "std": arr.std(0).tolist()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
