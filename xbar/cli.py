"""The `xbar` command line: thin argument parsing over the library; errors print one clear line."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import __version__
from .errors import XbarError


def _device(name_or_path: str, bits: int | None = None):
    from .device import Device
    dev = Device.preset(name_or_path)
    return dev.with_(bits=bits) if bits is not None else dev


def _tile(text: str) -> tuple[int, int]:
    try:
        r, c = text.lower().split("x")
        return int(r), int(c)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile {text!r}: expected ROWSxCOLS, e.g. 64x64") from None


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
        return 0
    rows = []
    for name in Device.presets():
        d = Device.preset(name)
        rows.append((d.name, d.summary(), f"{d.g_min_us:.4g}-{d.g_max_us:.4g}",
                     f"{d.g_max_us / d.g_min_us:.3g}" if d.g_min_us > 0 else "inf",
                     f"{d.program_noise_rel:g}", f"{d.read_noise_rel:g}", f"{d.drift_nu_mean:g}",
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
                          "classes": int(len(np.unique(y))), "min": float(X.min()), "max": float(X.max())}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xbar", description="Memristor crossbar simulator for neural networks")
    p.add_argument("--version", action="version", version=f"xbar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("devices", help="list device presets, or show one in full")
    d.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    d.add_argument("name", nargs="?")
    d.set_defaults(func=cmd_devices)

    m = sub.add_parser("mvm-demo", help="program a layer on every preset and report the MVM error")
    m.add_argument("--bits", type=int, default=None, help="override every preset's bits")
    m.add_argument("--tile", type=_tile, default=(64, 64))
    m.add_argument("--adc-bits", type=int, default=8)
    m.add_argument("--dac-bits", type=int, default=8)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_mvm_demo)

    da = sub.add_parser("data", help="fetch or inspect datasets")
    da.add_argument("action", choices=["fetch", "info"])
    da.add_argument("name")
    da.add_argument("--split", default="test")
    da.add_argument("--data-dir", default=None)
    da.set_defaults(func=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except XbarError as exc:
        print(f"xbar: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xbar: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
