"""The `xbar` command line: thin argument parsing over the library; errors print one clear line."""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys

import numpy as np

from . import __version__
from ._runtime import tune_allocator
from .errors import UsageError, XbarError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one UsageError line, not a usage dump."""

    def error(self, message):
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)   # stays one line
        command = self.prog.removeprefix("xbar").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see `{self.prog} --help`)")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows '(default: X)' for options whose default means something (not None, not False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default:" in text or default is None or default is False
                or default == argparse.SUPPRESS
                or not action.option_strings or isinstance(default, list) and not default):
            return text
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else "%(default)s"
        return f"{text} (default: {shown})"


def _device(name_or_path: str, bits: int | None = None):
    from .device import Device
    dev = Device.preset(name_or_path)
    return dev.with_(bits=bits) if bits is not None else dev


def _tile(text: str) -> tuple[int, int]:
    from .train.loop import parse_tile
    try:
        return parse_tile(text)
    except XbarError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1, the number of local worker "
                                         "processes (omit for one per core)")
    return n


# ---- xbar devices ---------------------------------------------------------------------------------

def cmd_devices(args) -> int:
    from .device import FIELDS, Device
    if args.action == "show":
        if not args.name:
            raise XbarError("usage: xbar devices show NAME")
        dev = Device.preset(args.name)
        print(f"# {dev.name}  ({dev.file})")
        for f in FIELDS:
            value = getattr(dev, f.name)
            unit = f" {f.unit}" if f.unit and value is not None else ""
            shown = "-" if value is None else (list(value) if isinstance(value, tuple) else value)
            print(f"{f.name:<18} {str(shown) + unit:<34} {f.doc}")
        lv = dev.levels()
        if lv is not None and len(lv) <= 16:
            print(f"{'levels':<18} {np.round(lv, 6).tolist()}")
        for model in dev.models():     # the model of each effect, constant ones included
            print(f"[{model.kind}] model = {model.name!r}  ({model.source or 'constant fields above'})")
            fields = {f.name: f for f in model.FIELDS}
            for key, value in model.params.items():
                f = fields[key]
                shown = list(value) if isinstance(value, tuple) else value
                if isinstance(shown, list) and len(shown) > 8:
                    shown = f"[{len(shown)} values]"
                unit = f" {f.unit}" if f.unit and value is not None else ""
                print(f"  {key:<16} {str(shown) + unit:<34} {f.doc}")
        return 0
    rows = []
    for name in Device.presets():
        d = Device.preset(name)
        rows.append((d.name, d.summary(), f"{d.g_min_us:.4g}-{d.g_max_us:.4g}",
                     f"{d.g_max_us / d.g_min_us:.3g}" if d.g_min_us > 0 else "inf",
                     *(d.as_dict()[k]["model"] if getattr(d, k) is not None else f"{getattr(d, flat):g}"
                       for k, flat in (("program_noise", "program_noise_rel"), ("read_noise", "read_noise_rel"),
                                       ("drift", "drift_nu_mean"))),
                     f"{d.nonlinearity_ltp:g}/{d.nonlinearity_ltd:g}", f"{d.c2c_rel:g}", d.description))
    head = ("name", "levels", "G µS", "on/off", "prog", "read", "drift ν", "NL ltp/ltd", "c2c", "description")
    _print_table(head, rows)
    return 0


def _print_table(head, rows) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in (head, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())


# ---- xbar mvm-demo: program a layer on every preset and report the in-memory MVM error ----------

def cmd_mvm_demo(args) -> int:
    from .crossbar import Crossbar
    from .data import load
    from .device import Device
    from .tile.arrays import check_fits, crossbar_bytes
    check_fits(crossbar_bytes(64, 32, args.tile), f"--tile {args.tile[0]}x{args.tile[1]}",
               "use a smaller tile, e.g. 64x64")
    X, _ = load("digits", "test")
    rng = np.random.default_rng(args.seed)
    W = (rng.standard_normal((X.shape[1], 32)) / np.sqrt(X.shape[1])).astype(np.float32)
    W /= np.abs(W).max()
    ref = X @ W
    rows = []
    for name in Device.presets():
        dev = Device.preset(name)
        if args.bits is not None:
            dev = dev.with_(bits=args.bits)
        xb = Crossbar(dev, tile=args.tile, adc_bits=args.adc_bits, dac_bits=args.dac_bits, seed=args.seed)
        xb.program(W).calibrate(X)
        y = xb.mvm(X)
        err = np.sqrt(np.mean((y - ref) ** 2)) / np.sqrt(np.mean(ref ** 2))
        y_day = xb.at(86400.0, compensate=True).mvm(X)
        err_day = np.sqrt(np.mean((y_day - ref) ** 2)) / np.sqrt(np.mean(ref ** 2))
        s = xb.stats()
        rows.append((name, dev.summary(), f"{100 * err:.2f}", f"{100 * err_day:.2f}", s["tiles"],
                     s["devices"], s["adc_conversions"], s["adc_clipped"]))
    print(f"64x32 layer on digits (360 images), tile {args.tile[0]}x{args.tile[1]}, "
          f"ADC {args.adc_bits} bits, DAC {args.dac_bits} bits; relative RMS error vs float")
    _print_table(("device", "levels", "err %", "err % @1 day", "tiles", "devices", "ADC conv", "clipped"),
                 rows)
    return 0


# ---- xbar data ------------------------------------------------------------------------------------

def cmd_data(args) -> int:
    from . import data
    if args.action == "fetch":
        data.fetch(args.name, args.data_dir)
    else:
        X, y = data.load(args.name, args.split, args.data_dir)
        print(json.dumps({"dataset": args.name, "split": args.split, "shape": list(X.shape),
                          "classes": len(np.unique(y)), "min": float(X.min()), "max": float(X.max())}))
    return 0


# ---- xbar train / baseline / demo ------------------------------------------------------------------

def _add_config_options(parser: argparse.ArgumentParser, fields) -> None:
    """One --option per config field, generated from the same Field specs that validate configs.

    Values are only converted here (text to number); the Field checks them, so a bad value gets
    the same message (field, valid range) as in a TOML file. Help shows each field's default.
    """
    from .train.loop import FIELDS as TRAIN_FIELDS
    resolved = _train_default_texts()
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        text = f.doc + (f" [{f.range_text()}]" if f.kind != "str" or f.choices else "")
        if f in TRAIN_FIELDS and f.name in resolved:
            text += f" (default: {resolved[f.name]})"
        elif f.default is not None and "default" not in f.doc:
            text += f" (default: {_show(f.default)})"
        kw: dict = {"dest": f.name, "default": None, "help": text.replace("%", "%%")}
        if f.kind == "bool":
            kw["type"] = _bool
            kw["metavar"] = "true|false"
        elif f.kind in ("int", "float"):
            kw["type"] = _number
            kw["metavar"] = f.name.upper()
        if f.choices:
            kw["metavar"] = "{" + ",".join(f.choices) + "}"
        parser.add_argument(flag, **kw)


def _number(text: str):
    """'3' -> 3, '0.5' / 'inf' -> float, anything else stays text for the Field to refuse."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _train_default_texts() -> dict[str, str]:
    """Field -> the default `resolve()` fills in, per update scheme where they differ."""
    from .train.loop import BASE_DEFAULTS, UPDATE_DEFAULTS
    out = {}
    keys = dict.fromkeys([*BASE_DEFAULTS, *(k for d in UPDATE_DEFAULTS.values() for k in d)])
    for k in keys:
        groups: dict[str, list[str]] = {}
        for update, d in UPDATE_DEFAULTS.items():
            groups.setdefault(_show(d.get(k, BASE_DEFAULTS.get(k))), []).append(update)
        if len(groups) == 1:
            out[k] = next(iter(groups))
        else:
            out[k] = "by --update: " + "; ".join(f"{'/'.join(us)} {v}" for v, us in groups.items())
    return out


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _config_from_args(args, fields) -> dict:
    return {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name) is not None}


def train_config(args):
    """The resolved TrainConfig of parsed `xbar train` arguments (validated; nothing is trained)."""
    from .train import TrainConfig
    from .train.loop import FIELDS
    data = _config_from_args(args, FIELDS)
    if data.get("init"):   # the run's network and dataset, unless the command line names others
        from .interop.commands import init_defaults
        data = {**init_defaults(data["init"]), **data}
    return TrainConfig.from_dict(data, file="command line").resolve()


def parse_train_config(argv: list[str]):
    """argv (without 'xbar train') -> the resolved TrainConfig, as `xbar train` would run it (and
    its --out checked); nothing is trained. A bad command line raises an XbarError (UsageError,
    ConfigError); only --help exits (SystemExit 0)."""
    args = _train_parser().parse_args(_join_dash_values(list(argv)))
    if args.out is not None:
        from .paths import check_output_path
        check_output_path(args.out, "--out")
    return train_config(args)


class _Progress:
    """One line per epoch on stderr (stdout stays clean for --json)."""

    def __init__(self, epochs: int | None, quiet: bool):
        self.epochs, self.quiet = epochs, quiet

    def __call__(self, entry: dict) -> None:
        if self.quiet:
            return
        tr = entry.get("train_accuracy")
        tr_text = "" if tr is None else f"  train {tr:6.2f}%"
        total = f"/{self.epochs}" if self.epochs else ""
        print(f"epoch {entry['epoch']:>3}{total}  test {entry['test_accuracy']:6.2f}%{tr_text}  "
              f"loss {entry['loss']:.4f}  {entry['seconds']:.2f}s", file=sys.stderr, flush=True)


def _hardware_text(cfg: dict) -> str:
    """'update qat, device rram-4bit (1-bit)' or 'update float (no device)'."""
    update = cfg.get("update")
    if update in (None, "float") or not cfg.get("device"):
        return f"update {update or 'float'} (no device)"
    try:
        from .train import TrainConfig
        levels = TrainConfig.from_dict({k: cfg[k] for k in ("device", "device_set", "bits") if cfg.get(k)
                                        is not None}).device_obj().summary()
    except XbarError:
        levels = f"{cfg['bits']}-bit" if cfg.get("bits") else "its own levels"
    return f"update {update}, device {cfg['device']} ({levels})"


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=_json_default))
        return
    cfg = result["config"]
    print(f"{cfg.get('network')} on {cfg.get('dataset')}, {_hardware_text(cfg)}: status {result['status']}"
          + (f" ({result['message']})" if result.get("message") else ""))
    if result.get("test_accuracy") is not None:
        print(f"test accuracy {result['test_accuracy']:.2f}%  train accuracy "
              f"{result['train_accuracy'] if result['train_accuracy'] is None else round(result['train_accuracy'], 2)}%"
              f"  ({result['seconds']:.1f} s)")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def cmd_train(args) -> int:
    from .train import train
    if args.out is not None:
        from .paths import check_output_path
        check_output_path(args.out, "--out")   # before an hour of training, not after
    cfg = train_config(args)
    if args.update is None and cfg.update != "float" and not (args.json or args.quiet):
        given = ", ".join(f"--{k.replace('_', '-')}" for k in ("device", "device_set", "bits")
                          if getattr(args, k) is not None)
        print(f"note: {given} without --update: training on the device with update {cfg.update!r} "
              "(--update float trains without one)", file=sys.stderr)
    result = train(cfg, on_epoch=_Progress(cfg.epochs, args.json or args.quiet), keep_trainer=bool(args.out))
    if args.out:
        from .checkpoint import save
        save(args.out, result.pop("_trainer", None), cfg, result)
    result.pop("_trainer", None)
    _print_result(result, args.json)
    return 0 if result["status"] == "ok" else 1


def cmd_baseline(args) -> int:
    from .baseline import baseline, resolve
    from .train import TrainConfig
    from .train.loop import FIELDS
    # Unresolved: the baseline ignores device fields, so their checks must not run here.
    cfg = TrainConfig.from_dict(_config_from_args(args, FIELDS), file="command line")
    result = baseline(cfg, on_epoch=_Progress(resolve(cfg)[0].epochs, args.json or args.quiet))
    _print_result(result, args.json)
    return 0 if result["status"] == "ok" else 1


_TIME_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def _times(text: str) -> list[float]:
    """'1,3600,1d,1y' -> seconds after programming (units s, min, h, d, w, y; bare numbers are s)."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(s|m|min|h|d|w|y)?\s*", part)
        try:
            value = float(m.group(1)) * _TIME_UNITS[m.group(2) or "s"] if m else float("nan")
        except ValueError:
            value = float("nan")
        if not (value > 0 and np.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: expected times after programming > 0, "
                                             "e.g. 1,3600,86400,31536000 or 1s,1h,1d,1y")
        out.append(value)
    return out


def cmd_eval(args) -> int:
    from .checkpoint import load
    run = load(args.run)
    times = args.at or [None]
    results = [run.evaluate_dataset(at_seconds=t, compensate=args.compensate if t is not None else False,
                                    data_dir=args.data_dir) for t in times]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"run": args.run, "results": results},
                         default=_json_default))
        return 0
    comp = {False: "", "exact": " (drift compensated)", "read": " (drift compensated through noisy reads)"}
    if len(results) == 1:
        t = times[0]
        print(f"{args.run}: test accuracy {results[0]['test_accuracy']:.2f}%"
              + ("" if t is None else f" at {t:g} s after programming" + comp[args.compensate]))
        return 0
    print(f"{args.run}: test accuracy after programming{comp[args.compensate]}")
    _print_table(("t (s)", "t", "test accuracy %"),
                 [(f"{t:g}", _human_time(t), f"{r['test_accuracy']:.2f}") for t, r in zip(times, results)])
    return 0


def _human_time(t: float) -> str:
    for unit, size in (("y", 31536000.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= size:
            return f"{t / size:.3g} {unit}"
    return f"{t:.3g} s"


def cmd_sweep(args) -> int:
    from .sweep import Experiment, parse_only, run_sweep
    exp = Experiment.load(args.spec)
    out = args.out or f"results/{exp.name}.h5"
    if not args.dry_run:
        from .paths import check_output_path
        check_output_path(out, "--out", create_parents=True)
    summary = run_sweep(exp, out, workers=args.workers, cluster=args.cluster, only=parse_only(args.only),
                        force=args.force, dry_run=args.dry_run, retry_failed=args.retry_failed,
                        progress=not args.quiet)
    return 1 if summary.get("failed") else 0


def cmd_report(args) -> int:
    from .paths import check_output_path
    from .report import compare, report
    check_output_path(args.out or ("report-compare" if args.compare else "report"), "--out", kind="folder",
                      create_parents=True)
    if args.compare:
        if len(args.stores) != 2:
            raise XbarError("--compare takes exactly two stores: xbar report A.h5 B.h5 --compare")
        written = compare(args.stores[0], args.stores[1], args.out or "report-compare")
    else:
        if len(args.stores) != 1:
            raise XbarError("give one store (or two with --compare)")
        written = report(args.stores[0], args.out or "report")
    for w in written:
        print(w)
    return 0


DEMO_UPDATES = ("float", "nearest", "stochastic", "qat")


def cmd_demo(args) -> int:
    """Train digits-mlp on a 3-bit crossbar with each update scheme and print one table."""
    from .train import train
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
    _print_table(("update", "levels", "status", "test acc %", "seconds", "tiles"), rows)
    return 0


def _add_train_options(t: argparse.ArgumentParser, out: bool) -> argparse.ArgumentParser:
    from .train.loop import FIELDS as TRAIN_FIELDS
    _add_config_options(t, TRAIN_FIELDS)
    t.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    t.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    if out:
        t.add_argument("--out", default=None, help="save the trained network and device state (.h5)")
    return t


@functools.lru_cache(maxsize=1)
def _train_parser() -> argparse.ArgumentParser:
    """`xbar train` alone (for parse_train_config: the full parser imports every command)."""
    return _add_train_options(_Parser(prog="xbar train", formatter_class=_HelpFormatter), out=True)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xbar", description="Memristor crossbar simulator for neural networks",
                formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"xbar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, **kw):
        return sub.add_parser(name, formatter_class=_HelpFormatter, **kw)

    d = command("devices", help="list device presets, or show one in full")
    d.add_argument("action", nargs="?", choices=["list", "show"], default="list",
                   help="list: one line per preset; show: every field of one (default: list)")
    d.add_argument("name", nargs="?", help="preset name or path to a device .toml (for show)")
    d.set_defaults(func=cmd_devices)

    m = command("mvm-demo", help="program a layer on every preset and report the MVM error")
    m.add_argument("--bits", type=int, default=None, help="override every preset's bits (1-8)")
    m.add_argument("--tile", type=_tile, default=(64, 64), metavar="ROWSxCOLS", help="devices per crossbar tile")
    m.add_argument("--adc-bits", type=int, default=8, help="ADC resolution per tile output (2-16)")
    m.add_argument("--dac-bits", type=int, default=8, help="input DAC resolution (2-16)")
    m.add_argument("--seed", type=int, default=0, help="seed of the weights and the devices")
    m.set_defaults(func=cmd_mvm_demo)

    for name, func, text in (("train", cmd_train, "train a network on the simulated crossbar"),
                             ("baseline", cmd_baseline, "train the same network in float torch")):
        _add_train_options(command(name, help=text), out=name == "train")
        sub.choices[name].set_defaults(func=func)

    e = command("eval", help="re-evaluate a saved run, optionally after drift")
    e.add_argument("run", help="a run saved with xbar train --out (.h5)")
    e.add_argument("--at", type=_times, default=None, help="times after programming, comma-separated, in s "
                   "or with a unit (1,3600,1d,1y); one line of accuracy each (default: as programmed)")
    e.add_argument("--compensate", nargs="?", const="exact", default=False, choices=("exact", "read"),
                   help="global drift compensation: 'exact' (the default when given: from the noise-free "
                   "conductances) or 'read' (measured through noisy one-hot reads, as a chip can)")
    e.add_argument("--data-dir", default=None, help="folder searched first for the dataset files")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    e.set_defaults(func=cmd_eval)

    sw = command("sweep", help="run an experiment grid (experiments/*.toml) into one HDF5 store")
    sw.add_argument("spec", help="experiment preset name or path to a .toml spec")
    sw.add_argument("--workers", type=_workers, default=None,
                    help="local worker processes, >= 1 (default: one per core)")
    sw.add_argument("--cluster", default=None, metavar="ADDRESS",
                    help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786, instead of local processes")
    sw.add_argument("--out", default=None, help="store file (default: results/<spec name>.h5)")
    sw.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                    help="run only matching runs (repeat; same key = any of, different keys = all of)")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and an estimated time; run nothing")
    sw.add_argument("--force", action="store_true", help="add this spec's runs to a store of another spec")
    sw.add_argument("--retry-failed", action="store_true", help="run again the runs stored with status 'error'")
    sw.add_argument("--quiet", action="store_true", help="no progress line")
    sw.set_defaults(func=cmd_sweep)

    rp = command("report", help="figures and tables from a sweep store")
    rp.add_argument("stores", nargs="+", help="store file(s); two with --compare")
    rp.add_argument("--out", default=None, help="output folder (default: report/)")
    rp.add_argument("--compare", action="store_true", help="two stores side by side")
    rp.set_defaults(func=cmd_report)

    from . import cost, prune
    from .interop.commands import add_commands as add_interop_commands
    cost.add_cli(sub)
    prune.add_cli(sub)
    add_interop_commands(sub)

    dm = command("demo", help="digits on a 3-bit crossbar: float vs nearest vs stochastic vs qat")
    dm.add_argument("--device", default="ideal", help="device preset or path to a .toml")
    dm.add_argument("--bits", type=int, default=3, help="device levels: 2**bits (1-8)")
    dm.add_argument("--epochs", type=int, default=30, help="passes over the training set per scheme")
    dm.add_argument("--adc-bits", type=int, default=8, help="ADC resolution per tile output (2-16)")
    dm.add_argument("--seed", type=int, default=1, help="seed of init, shuffling and devices")
    dm.set_defaults(func=cmd_demo)

    from .data import DATASETS, SPLITS
    da = command("data", help="fetch or inspect datasets")
    da.add_argument("action", choices=["fetch", "info"], help="fetch: download and check the files; info: "
                    "shape, classes and value range of one split")
    da.add_argument("name", choices=DATASETS, metavar="{" + ",".join(DATASETS) + "}", help="dataset")
    da.add_argument("--split", default="test", choices=SPLITS, help="split shown by info")
    da.add_argument("--data-dir", default=None, help="fetch: where to put the files (default: $XBAR_DATA, "
                    "else ~/.cache/xbar); info: folder searched first")
    da.set_defaults(func=cmd_data)
    return p


def _join_dash_values(argv: list[str]) -> list[str]:
    """['--tile', '-64x64'] -> ['--tile=-64x64']: argparse takes a value that starts with '-' (other
    than a plain negative number) for an option, and would answer 'expected one argument'."""
    out: list[str] = []
    for a in argv:
        if (out and out[-1].startswith("--") and "=" not in out[-1] and re.match(r"-[\d.]", a)):
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _join_dash_values(list(sys.argv[1:] if argv is None else argv))
    args = None
    try:
        args = build_parser().parse_args(argv)
        tune_allocator()
        return args.func(args)
    except XbarError as exc:
        print(f"xbar: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        extra = ("; finished runs are stored, re-run the same command to continue"
                 if getattr(args, "command", "") == "sweep" else "")
        print(f"xbar: interrupted{extra}", file=sys.stderr)
        return 130
    except BrokenPipeError:   # e.g. `xbar ... --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
