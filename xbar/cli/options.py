"""What every command shares: argparse from Field specs, value parsers, progress, tables and JSON.

The library never imports this package; commands build their parsers from the library's public
Field specs (``xbar.train.FIELDS``, ``xbar.prune.FIELDS``, ...) with :func:`add_config_options`
and turn parsed arguments back into config dicts with :func:`config_from_args`.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from ..config import parse_tile
from ..errors import UsageError, XbarError
from ..jsonio import dumps


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one UsageError line, not a usage dump."""

    def error(self, message):
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)   # stays one line
        command = self.prog.removeprefix("xbar").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see `{self.prog} --help`)")


class HelpFormatter(argparse.HelpFormatter):
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


# ---- values -------------------------------------------------------------------------------------

def tile_arg(text: str) -> tuple[int, int]:
    try:
        return parse_tile(text)
    except XbarError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def workers_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1, the number of local worker "
                                         "processes (omit for one per core)")
    return n


def number(text: str):
    """'3' -> 3, '0.5' / 'inf' -> float, anything else stays text for the Field to refuse."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def bool_arg(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


TIME_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def times_arg(text: str) -> list[float]:
    """'1,3600,1d,1y' -> seconds after programming (units s, min, h, d, w, y; bare numbers are s)."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(s|m|min|h|d|w|y)?\s*", part)
        try:
            value = float(m.group(1)) * TIME_UNITS[m.group(2) or "s"] if m else float("nan")
        except ValueError:
            value = float("nan")
        if not (value > 0 and np.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: expected times after programming > 0, "
                                             "e.g. 1,3600,86400,31536000 or 1s,1h,1d,1y")
        out.append(value)
    return out


def join_dash_values(argv: list[str]) -> list[str]:
    """['--tile', '-64x64'] -> ['--tile=-64x64']: argparse takes a value that starts with '-' (other
    than a plain negative number) for an option, and would answer 'expected one argument'."""
    out: list[str] = []
    for a in argv:
        if (out and out[-1].startswith("--") and "=" not in out[-1] and re.match(r"-[\d.]", a)):
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


# ---- config options from Field specs --------------------------------------------------------------

def add_config_options(parser: argparse.ArgumentParser, fields) -> None:
    """One --option per config field, generated from the same Field specs that validate configs.

    Values are only converted here (text to number); the Field checks them, so a bad value gets
    the same message (field, valid range) as in a TOML file. Help shows each field's default.
    """
    from ..train import TrainConfig
    train_fields = TrainConfig.fields()
    resolved = train_default_texts()
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        text = f.doc + (f" [{f.range_text()}]" if f.kind != "str" or f.choices else "")
        if f in train_fields and f.name in resolved:
            text += f" (default: {resolved[f.name]})"
        elif f.default is not None and "default" not in f.doc:
            text += f" (default: {show(f.default)})"
        kw: dict = {"dest": f.name, "default": None, "help": text.replace("%", "%%")}
        if f.kind == "bool":
            kw["type"] = bool_arg
            kw["metavar"] = "true|false"
        elif f.kind in ("int", "float"):
            kw["type"] = number
            kw["metavar"] = f.name.upper()
        elif f.kind == "floats" and f.unit == "s":   # times: 3600,86400 or 1h,1d,1y (as eval --at)
            kw["type"] = times_arg
            kw["metavar"] = "T,T,..."
        if f.choices:
            kw["metavar"] = "{" + ",".join(f.choices) + "}"
        parser.add_argument(flag, **kw)


def train_default_texts() -> dict[str, str]:
    """Field -> the default `resolve()` fills in, per update scheme where they differ."""
    from ..train.defaults import BASE_DEFAULTS, update_defaults
    by_update = update_defaults()
    out = {}
    keys = dict.fromkeys([*BASE_DEFAULTS, *(k for d in by_update.values() for k in d)])
    for k in keys:
        groups: dict[str, list[str]] = {}
        for update, d in by_update.items():
            groups.setdefault(show(d.get(k, BASE_DEFAULTS.get(k))), []).append(update)
        if len(groups) == 1:
            out[k] = next(iter(groups))
        else:
            out[k] = "by --update: " + "; ".join(f"{'/'.join(us)} {v}" for v, us in groups.items())
    return out


def config_from_args(args, fields) -> dict:
    """The fields given on the command line (the others are left to the config's defaults)."""
    return {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name) is not None}


def add_output_options(parser: argparse.ArgumentParser, *, progress: str, out: str | None) -> None:
    """--json, --quiet (with `progress` as its help) and, when `out` is given, --out."""
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help=progress)
    if out is not None:
        parser.add_argument("--out", default=None, help=out)


# ---- output ------------------------------------------------------------------------------------

class Progress:
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


def print_table(head, rows) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in (head, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())


def print_json(obj) -> None:
    """Exactly one JSON object on stdout."""
    print(dumps(obj))


def check_out(path, what: str = "--out", **kw) -> None:
    """Refuse an output path that cannot be written, before any work starts."""
    from ..paths import check_output_path
    check_output_path(path, what, **kw)


def command(sub, name: str, **kw) -> argparse.ArgumentParser:
    """A subcommand whose help shows the defaults (HelpFormatter)."""
    return sub.add_parser(name, formatter_class=HelpFormatter, **kw)
