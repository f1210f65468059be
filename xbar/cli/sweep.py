"""`xbar sweep` and `xbar report`: experiment grids into one store, figures and tables from it."""

from __future__ import annotations

from ..errors import XbarError
from .options import check_out, command, workers_arg


def cmd_sweep(args) -> int:
    from ..sweep import Experiment, parse_only, run_sweep
    exp = Experiment.load(args.spec)
    out = args.out or f"results/{exp.name}.h5"
    if not args.dry_run:
        check_out(out, "--out", create_parents=True)
    summary = run_sweep(exp, out, workers=args.workers, cluster=args.cluster, only=parse_only(args.only),
                        force=args.force, dry_run=args.dry_run, retry_failed=args.retry_failed,
                        progress=not args.quiet, stack=args.stack)
    return 1 if summary.get("failed") else 0


def cmd_report(args) -> int:
    from ..report import compare, report
    check_out(args.out or ("report-compare" if args.compare else "report"), "--out", kind="folder",
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


def add_commands(sub) -> None:
    """Register sweep and report."""
    sw = command(sub, "sweep", help="run an experiment grid (experiments/*.toml) into one HDF5 store")
    sw.add_argument("spec", help="experiment preset name or path to a .toml spec")
    sw.add_argument("--workers", type=workers_arg, default=None,
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
    sw.add_argument("--stack", default="auto", choices=("auto", "off"),
                    help="auto (default): train runs that differ only in device-side settings together, "
                         "one stack per group; off: every run alone")
    sw.set_defaults(func=cmd_sweep)

    rp = command(sub, "report", help="figures and tables from a sweep store")
    rp.add_argument("stores", nargs="+", help="store file(s); two with --compare")
    rp.add_argument("--out", default=None, help="output folder (default: report/)")
    rp.add_argument("--compare", action="store_true", help="two stores side by side")
    rp.set_defaults(func=cmd_report)
