"""`xbar devices`, `mvm-demo` and `data`: presets, a layer on every preset, datasets."""

from __future__ import annotations

import json

import numpy as np

from ..errors import XbarError
from .options import command, print_table, tile_arg


def cmd_devices(args) -> int:
    from ..device import FIELDS, Device
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
    print_table(head, rows)
    return 0


def cmd_mvm_demo(args) -> int:
    """Program a layer on every preset and report the in-memory MVM error."""
    from ..crossbar import Crossbar
    from ..data import load
    from ..device import Device
    from ..tile.arrays import check_fits, crossbar_bytes
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
    print_table(("device", "levels", "err %", "err % @1 day", "tiles", "devices", "ADC conv", "clipped"),
                rows)
    return 0


def cmd_data(args) -> int:
    from .. import data
    if args.action == "fetch":
        data.fetch(args.name, args.data_dir)
    else:
        X, y = data.load(args.name, args.split, args.data_dir)
        print(json.dumps({"dataset": args.name, "split": args.split, "shape": list(X.shape),
                          "classes": len(np.unique(y)), "min": float(X.min()), "max": float(X.max())}))
    return 0


def add_commands(sub) -> None:
    """Register devices and mvm-demo."""
    d = command(sub, "devices", help="list device presets, or show one in full")
    d.add_argument("action", nargs="?", choices=["list", "show"], default="list",
                   help="list: one line per preset; show: every field of one (default: list)")
    d.add_argument("name", nargs="?", help="preset name or path to a device .toml (for show)")
    d.set_defaults(func=cmd_devices)

    m = command(sub, "mvm-demo", help="program a layer on every preset and report the MVM error")
    m.add_argument("--bits", type=int, default=None, help="override every preset's bits (1-8)")
    m.add_argument("--tile", type=tile_arg, default=(64, 64), metavar="ROWSxCOLS", help="devices per crossbar tile")
    m.add_argument("--adc-bits", type=int, default=8, help="ADC resolution per tile output (2-16)")
    m.add_argument("--dac-bits", type=int, default=8, help="input DAC resolution (2-16)")
    m.add_argument("--seed", type=int, default=0, help="seed of the weights and the devices")
    m.set_defaults(func=cmd_mvm_demo)


def add_data(sub) -> None:
    from ..data import DATASETS, SPLITS
    da = command(sub, "data", help="fetch or inspect datasets")
    da.add_argument("action", choices=["fetch", "info"], help="fetch: download and check the files; info: "
                    "shape, classes and value range of one split")
    da.add_argument("name", choices=DATASETS, metavar="{" + ",".join(DATASETS) + "}", help="dataset")
    da.add_argument("--split", default="test", choices=SPLITS, help="split shown by info")
    da.add_argument("--data-dir", default=None, help="fetch: where to put the files (default: $XBAR_DATA, "
                    "else ~/.cache/xbar); info: folder searched first")
    da.set_defaults(func=cmd_data)
