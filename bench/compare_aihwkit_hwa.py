"""aihwkit's hardware-aware training (HWA) and PCM inference, side by side with xbar's `--recipe hwa`.

The network and data of issue 17's acceptance table: a 784-100-100-10 ReLU MLP (log-softmax), Fashion-MNIST
(xbar's loader: pixels in [0, 1]), 30 epochs, batch 64, seed 1, 64x64 tiles, 8-bit ADC. aihwkit 1.2's
`StandardHWATrainingPreset` (Rasch et al., Nat. Electron. 2023 / arXiv 2302.08469: the aihwkit authors'
benchmark setting for HWA) with its tiles cut to 64x64 and its ADC set to 8 bits (out_res 1/254),
everything else as the preset has it:

- training forward: additive output noise 0.04, PCM-like read noise on the weights (w_noise 0.0175,
  PCM_READ), 8-bit DAC (inp_res 1/254) with a learned input range, output bound 10, weights clipped
  to [-1, 1] after each step, column-wise weight scaling (omega 1) with learned output scales,
  digital bias; backward and update ideal (InferenceRPUConfig);
- inference: `program_analog_weights()` (PCMLikeNoiseModel, g_max 25 µS: programming noise, drift
  coefficients), then `drift_analog_weights(t)` (drift, 1/f read noise, GlobalDriftCompensation).

`--modifier` adds aihwkit's training-time weight-noise modifier on top (the PCM_NOISE modifier of the
HWA papers; off by default in the preset). Each time point is evaluated on `--repeats` independent
programmings (mean and std reported), one programming per repeat reused for every time.

Run in a venv with aihwkit (../shared/tools/install-peers.sh), xbar importable for the data:

    PYTHONPATH=. /tmp/peers/venv/bin/python bench/compare_aihwkit_hwa.py --out aihwkit_hwa.json

Without aihwkit it says so and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time

import numpy as np
from _benchlib import require_aihwkit

TIMES = {"0 s": 0.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 365 * 86400.0}




def rpu_config(adc_bits: int, tile: int, modifier: float):
    from aihwkit.simulator.parameters.enums import WeightModifierType
    from aihwkit.simulator.presets.inference import StandardHWATrainingPreset
    cfg = StandardHWATrainingPreset()
    cfg.mapping.max_input_size = tile
    cfg.mapping.max_output_size = tile
    cfg.forward.out_res = 1.0 / (2 ** adc_bits - 2)
    if modifier > 0:
        cfg.modifier.type = WeightModifierType.PCM_NOISE
        cfg.modifier.std_dev = modifier
        cfg.modifier.rel_to_actual_wmax = True
    return cfg


def build(torch, cfg, widths):
    from aihwkit.nn import AnalogLinear, AnalogSequential
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(AnalogLinear(a, b, bias=True, rpu_config=cfg))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    layers.append(torch.nn.LogSoftmax(dim=1))
    return AnalogSequential(*layers)


def accuracy(torch, model, X, y, batch=1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            correct += int((model(X[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(X)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="AnalogAdam learning rate")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--adc-bits", type=int, default=8)
    p.add_argument("--modifier", type=float, default=0.0, help="PCM_NOISE weight-noise std during training "
                   "(relative to max|W|); 0 = the preset's (none)")
    p.add_argument("--repeats", type=int, default=5, help="independent programmings per time point")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-epochs", type=lambda s: {int(v) for v in s.split(",")}, default={30},
                   help="also program and evaluate over time after these epochs (comma-separated); the "
                   "JSON holds the latest")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch = require_aihwkit()
    from aihwkit.optim import AnalogAdam

    from xbar import data as xdata
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    Xtr, ytr = xdata.load("fmnist", "train")
    Xte, yte = xdata.load("fmnist", "test")
    if args.train_limit:
        Xtr, ytr = Xtr[:args.train_limit], ytr[:args.train_limit]
    Xtr, Xte = torch.from_numpy(Xtr), torch.from_numpy(Xte)
    ytr, yte = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))

    cfg = rpu_config(args.adc_bits, args.tile, args.modifier)
    model = build(torch, cfg, [784, 100, 100, 10])
    opt = AnalogAdam(model.parameters(), lr=args.lr)
    opt.regroup_param_groups(model)
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    t_start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(Xtr), generator=gen)
        for s in range(0, len(Xtr), args.batch):
            idx = perm[s:s + args.batch]
            opt.zero_grad()
            loss = torch.nn.functional.nll_loss(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
        acc = accuracy(torch, model, Xte, yte)
        history.append({"epoch": epoch, "test_accuracy": acc, "seconds": time.perf_counter() - t0})
        print(f"epoch {epoch:3d}  test {acc:6.2f}%  (HWA forward, before programming)  "
              f"{history[-1]['seconds']:.1f}s", flush=True)
        if epoch in args.eval_epochs or epoch == args.epochs:
            results = drift_table(torch, model, Xte, yte, args)
            history[-1]["after_programming"] = results
            _report(args, results, epoch, time.perf_counter() - t_start, history)
    return 0


def drift_table(torch, model, Xte, yte, args) -> dict:
    """Accuracy at every time of TIMES, on `args.repeats` independent programmings of the model."""
    results = {name: [] for name in TIMES}
    for r in range(args.repeats):
        chip = copy.deepcopy(model)
        chip.eval()
        torch.manual_seed(1000 + r)
        chip.program_analog_weights()
        for name, t in TIMES.items():
            chip.drift_analog_weights(t)
            results[name].append(accuracy(torch, chip, Xte, yte))
    print(f"{'t after programming':>20} | {'mean %':>7} | {'std':>5} | per programming")
    for name, accs in results.items():
        print(f"{name:>20} | {np.mean(accs):7.2f} | {np.std(accs):5.2f} | "
              + " ".join(f"{a:.2f}" for a in accs), flush=True)
    return {k: {"t_s": TIMES[k], "mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v}
            for k, v in results.items()}


def _report(args, results, epoch, train_seconds, history) -> None:
    print(f"(aihwkit {_version()} StandardHWATrainingPreset, {args.tile}x{args.tile} tiles, "
          f"{args.adc_bits}-bit ADC, modifier {args.modifier}; {args.repeats} programmings; epoch {epoch})",
          flush=True)
    if args.out:
        out = {"aihwkit": _version(), "preset": "StandardHWATrainingPreset", "args": dict(vars(args), eval_epochs=sorted(args.eval_epochs)),
               "epochs_done": epoch, "history": history, "seconds": train_seconds, "results": results}
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


def _version() -> str:
    import aihwkit
    return getattr(aihwkit, "__version__", "?")


if __name__ == "__main__":
    sys.exit(main())
