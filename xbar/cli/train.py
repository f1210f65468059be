"""`xbar train`, `baseline`, `eval` and `demo`: training runs and saved runs."""

from __future__ import annotations

import functools
import sys

from ..config import human_time
from ..errors import XbarError
from .options import (
    HelpFormatter,
    Parser,
    Progress,
    add_config_options,
    add_output_options,
    check_out,
    command,
    config_from_args,
    join_dash_values,
    print_json,
    print_table,
    times_arg,
)


def train_config(args):
    """The resolved TrainConfig of parsed `xbar train` arguments (validated; nothing is trained)."""
    from ..train import TrainConfig
    data = config_from_args(args, TrainConfig.fields())
    if data.get("init"):   # the run's network and dataset, unless the command line names others
        from ..train.init import init_defaults
        data = {**init_defaults(data["init"]), **data}
    return TrainConfig.from_dict(data, file="command line").resolve()


def parse_train_config(argv: list[str]):
    """argv (without 'xbar train') -> the resolved TrainConfig, as `xbar train` would run it (and
    its --out checked); nothing is trained. A bad command line raises an XbarError (UsageError,
    ConfigError); only --help exits (SystemExit 0)."""
    args = _train_parser().parse_args(join_dash_values(list(argv)))
    if args.out is not None:
        check_out(args.out)
    return train_config(args)


def _hardware_text(cfg: dict) -> str:
    """'update qat, device rram-4bit (1-bit)' or 'update float (no device)'."""
    update = cfg.get("update")
    if update in (None, "float") or not cfg.get("device"):
        return f"update {update or 'float'} (no device)"
    try:
        from ..train import TrainConfig
        levels = TrainConfig.from_dict({k: cfg[k] for k in ("device", "device_set", "bits") if cfg.get(k)
                                        is not None}).device_obj().summary()
    except XbarError:
        levels = f"{cfg['bits']}-bit" if cfg.get("bits") else "its own levels"
    return f"update {update}, device {cfg['device']} ({levels})"


def print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    cfg = result["config"]
    print(f"{cfg.get('network')} on {cfg.get('dataset')}, {_hardware_text(cfg)}: status {result['status']}"
          + (f" ({result['message']})" if result.get("message") else ""))
    if result.get("test_accuracy") is not None:
        train = result.get("train_accuracy")
        print(f"test accuracy {result['test_accuracy']:.2f}%"
              + ("" if train is None else f"  train accuracy {train:.2f}%")
              + f"  ({result['seconds']:.1f} s)")
    for a in result.get("after_programming") or []:
        print(f"  {human_time(a['t_s'])} after programming ({a['compensate']} drift compensation): "
              f"test accuracy {a['test_accuracy']:.2f}%")


def cmd_train(args) -> int:
    from ..train import train
    if args.out is not None:
        check_out(args.out)   # before an hour of training, not after
    cfg = train_config(args)
    if args.update is None and cfg.update != "float" and not (args.json or args.quiet):
        given = ", ".join(f"--{k.replace('_', '-')}" for k in ("device", "device_set", "bits")
                          if getattr(args, k) is not None)
        print(f"note: {given} without --update: training on the device with update {cfg.update!r} "
              "(--update float trains without one)", file=sys.stderr)
    result = train(cfg, on_epoch=Progress(cfg.epochs, args.json or args.quiet), keep_trainer=bool(args.out))
    if args.out:
        from ..checkpoint import save
        save(args.out, result.pop("_trainer", None), cfg, result)
    result.pop("_trainer", None)
    print_result(result, args.json)
    return 0 if result["status"] == "ok" else 1


def cmd_baseline(args) -> int:
    from ..baseline import baseline, resolve
    from ..train import TrainConfig
    # Unresolved: the baseline ignores device fields, so their checks must not run here.
    cfg = TrainConfig.from_dict(config_from_args(args, TrainConfig.fields()), file="command line")
    result = baseline(cfg, on_epoch=Progress(resolve(cfg)[0].epochs, args.json or args.quiet))
    print_result(result, args.json)
    return 0 if result["status"] == "ok" else 1


def cmd_eval(args) -> int:
    from ..checkpoint import load
    run = load(args.run)
    times = args.at or [None]
    results = [run.evaluate_dataset(at_seconds=t, compensate=args.compensate if t is not None else False,
                                    data_dir=args.data_dir) for t in times]
    if args.json:
        print_json(results[0] if len(results) == 1 else {"run": args.run, "results": results})
        return 0
    comp = {False: "", "exact": " (drift compensated)", "read": " (drift compensated through noisy reads)"}
    if len(results) == 1:
        t = times[0]
        print(f"{args.run}: test accuracy {results[0]['test_accuracy']:.2f}%"
              + ("" if t is None else f" at {t:g} s after programming" + comp[args.compensate]))
        return 0
    print(f"{args.run}: test accuracy after programming{comp[args.compensate]}")
    print_table(("t (s)", "t", "test accuracy %"),
                [(f"{t:g}", human_time(t), f"{r['test_accuracy']:.2f}") for t, r in zip(times, results)])
    return 0


DEMO_UPDATES = ("float", "nearest", "stochastic", "qat")


def cmd_demo(args) -> int:
    """Train digits-mlp on a 3-bit crossbar with each update scheme and print one table."""
    from ..train import train
    rows = []
    for update in DEMO_UPDATES:
        cfg = {"network": "digits-mlp", "dataset": "digits", "device": args.device, "update": update,
               "rule": "bp", "epochs": args.epochs, "seed": args.seed, "adc_bits": args.adc_bits,
               # digits has only 23 steps per epoch: the per-epoch lr decay the update schemes use
               # on Fashion-MNIST (938 steps per epoch) would starve it, so keep the rate constant.
               "lr_gamma": 1.0}
        if update != "float":
            cfg["bits"] = args.bits
        if update == "nearest":
            cfg.update({"quant": "asymm", "range": "global"})
        r = train(cfg)
        hw = r["hardware"]
        rows.append((update, "-" if update == "float" else f"{args.bits}-bit", r["status"],
                     "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.2f}",
                     f"{r['seconds']:.1f}", sum(h.get("tiles", 0) for h in hw) if hw else "-"))
        print(f"  {update:<10} done: {rows[-1][3]}%", file=sys.stderr, flush=True)
    print(f"digits-mlp (64-32-10) on digits, device {args.device}, {args.bits}-bit levels, "
          f"{args.epochs} epochs, 64x64 tiles, ADC {args.adc_bits} bits")
    print_table(("update", "levels", "status", "test acc %", "seconds", "tiles"), rows)
    return 0


def add_train_options(t, out: bool):
    from ..train import TrainConfig
    add_config_options(t, TrainConfig.fields())   # the registered rules' and schemes' options too
    add_output_options(t, progress="no per-epoch progress on stderr",
                       out="save the trained network and device state (.h5)" if out else None)
    return t


@functools.lru_cache(maxsize=1)
def _train_parser():
    """`xbar train` alone (for parse_train_config: the full parser imports every command)."""
    return add_train_options(Parser(prog="xbar train", formatter_class=HelpFormatter), out=True)


def add_commands(sub) -> None:
    """Register train, baseline and eval (`command(sub, name, help=...)` makes a subparser)."""
    for name, func, text in (("train", cmd_train, "train a network on the simulated crossbar"),
                             ("baseline", cmd_baseline, "train the same network in float torch")):
        add_train_options(command(sub, name, help=text), out=name == "train").set_defaults(func=func)

    e = command(sub, "eval", help="re-evaluate a saved run, optionally after drift")
    e.add_argument("run", help="a run saved with xbar train --out (.h5)")
    e.add_argument("--at", type=times_arg, default=None, help="times after programming, comma-separated, in s "
                   "or with a unit (1,3600,1d,1y); one line of accuracy each (default: as programmed)")
    e.add_argument("--compensate", nargs="?", const="exact", default=False, choices=("exact", "read"),
                   help="global drift compensation: 'exact' (the default when given: from the noise-free "
                   "conductances) or 'read' (measured through noisy one-hot reads, as a chip can)")
    e.add_argument("--data-dir", default=None, help="folder searched first for the dataset files")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    e.set_defaults(func=cmd_eval)


def add_demo(sub) -> None:
    dm = command(sub, "demo", help="digits on a 3-bit crossbar: float vs nearest vs stochastic vs qat")
    dm.add_argument("--device", default="ideal", help="device preset or path to a .toml")
    dm.add_argument("--bits", type=int, default=3, help="device levels: 2**bits (1-8)")
    dm.add_argument("--epochs", type=int, default=30, help="passes over the training set per scheme")
    dm.add_argument("--adc-bits", type=int, default=8, help="ADC resolution per tile output (2-16)")
    dm.add_argument("--seed", type=int, default=1, help="seed of init, shuffling and devices")
    dm.set_defaults(func=cmd_demo)
