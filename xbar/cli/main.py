"""The `xbar` parser and entry point: one subcommand per command module; errors print one line."""

from __future__ import annotations

import sys

from .._runtime import tune_allocator
from ..errors import XbarError
from ..version import __version__
from . import devices, interop, prune, sweep, train
from .options import HelpFormatter, Parser, join_dash_values


def build_parser() -> Parser:
    p = Parser(prog="xbar", description="Memristor crossbar simulator for neural networks",
               formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"xbar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    devices.add_commands(sub)      # devices, mvm-demo
    train.add_commands(sub)        # train, baseline, eval
    sweep.add_commands(sub)        # sweep, report
    prune.add_cost(sub)
    prune.add_prune(sub)
    interop.add_commands(sub)      # import, export
    train.add_demo(sub)
    devices.add_data(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = join_dash_values(list(sys.argv[1:] if argv is None else argv))
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
