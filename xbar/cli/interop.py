"""`xbar import` and `xbar export`: torch models onto crossbars and back (see xbar.interop.commands)."""

from __future__ import annotations

import json

from ..interop.commands import IMPORT_FIELDS, import_model, instantiate, parse_shape
from ..interop.torch import CROSSBAR_OPTIONS
from .options import add_config_options


def cmd_import(args) -> int:
    opts = {k: getattr(args, k) for k in CROSSBAR_OPTIONS if getattr(args, k, None) is not None}
    result = import_model(args.model, args.example_shape, args.out, module=args.module, trust=args.trust,
                          dataset=args.dataset, batchnorm=args.batchnorm, spec_out=args.spec_out,
                          compare=args.compare, data_dir=args.data_dir, update=args.update or "qat",
                          device=args.device or "ideal", seed=1 if args.seed is None else args.seed, **opts)
    if args.json:
        print(json.dumps(result))
        return 0
    info = result["import"]
    print(f"{args.model} -> {args.out} ({len(info['torch_layers'])} crossbar layers; network spec {info['spec']})")
    c = result.get("compare")
    if c:
        print(f"{c['images']} test images: torch {c['torch_accuracy']:.2f}%, xbar {c['xbar_accuracy']:.2f}%, "
              f"same prediction {c['same_predictions']}/{c['images']}, max |logit diff| {c['max_abs_logit_diff']:.3g} "
              f"({c['max_rel_logit_diff']:.2e} of max |logit|)")
    return 0


# ---- export -----------------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from ..interop import export
    module = instantiate(args.module) if args.module else None
    shape = parse_shape(args.example_shape) if args.example_shape else None
    sd = export(args.run, args.model, shadow=args.shadow, module=module, example_input=shape,
                at_seconds=args.at, compensate=args.compensate)
    what = "shadow (float) weights" if args.shadow else "weights as programmed" + (
        f" at {args.at:g} s" if args.at is not None else "")
    print(f"{args.run} -> {args.model}: {len(sd)} tensors, {what}")
    return 0


def add_commands(subparsers) -> None:
    """Register `xbar import` and `xbar export` on the CLI's subparsers."""
    from ..train import FIELDS as TRAIN_FIELDS
    i = subparsers.add_parser("import", help="bring a trained torch model onto crossbars (an .h5 run file)",
                              description="Map a torch model onto xbar crossbar layers and program them: "
                              "--device ideal and --update qat unless given; the run file works with xbar "
                              "eval, cost --run, prune --init and export.")
    i.add_argument("model", help="a torch file: a state_dict (with --module), or a whole pickled module (--trust)")
    i.add_argument("--example-shape", required=True, metavar="C,H,W", help="one input sample's shape, e.g. 1,28,28 "
                   "(or N for flat vectors)")
    i.add_argument("--out", required=True, help="the run file to write (.h5)")
    i.add_argument("--module", default=None, metavar="PACKAGE.MODULE:NAME", help="the model's class (or a "
                   "factory without arguments) for a state_dict file; imported from the current folder first")
    i.add_argument("--trust", action="store_true", help="allow a whole pickled module (it runs code when loaded)")
    i.add_argument("--dataset", default=None, help="the dataset the model was trained on (default: from the "
                   "example shape, 1,28,28 -> fmnist); recorded for eval and train")
    i.add_argument("--data-dir", default=None)
    i.add_argument("--batchnorm", choices=("fold", "keep"), default="fold", help="fold batch norms into the "
                   "weights (default) or keep them as digital batch norm (trainable)")
    i.add_argument("--spec-out", default=None, help="network spec TOML to write (default: OUT with .toml)")
    i.add_argument("--compare", type=int, nargs="?", const=0, default=None, metavar="N",
                   help="evaluate torch and xbar on the first N test images (all if N is omitted)")
    i.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    add_config_options(i, [f for f in TRAIN_FIELDS if f.name in IMPORT_FIELDS])
    i.set_defaults(func=cmd_import)

    e = subparsers.add_parser("export", help="write a run's weights as a torch state_dict (.pt)")
    e.add_argument("run", help="a run file (.h5)")
    e.add_argument("model", help="the .pt file to write")
    e.add_argument("--shadow", action="store_true", help="the float (shadow) weights, not the programmed ones")
    e.add_argument("--at", type=float, default=None, help="the programmed weights this many seconds after "
                   "programming (drift)")
    e.add_argument("--compensate", action="store_true", help="with --at: global drift compensation")
    e.add_argument("--module", default=None, metavar="PACKAGE.MODULE:NAME",
                   help="name the tensors after this model's (default: the imported model's, else layers.<i>)")
    e.add_argument("--example-shape", default=None, metavar="C,H,W", help="with --module: one input's shape")
    e.set_defaults(func=cmd_export)
