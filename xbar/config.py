"""Configs as data: TOML files and keyword arguments validated into frozen, typed objects.

Every config class in xbar declares its fields once, as :class:`Field` specs. The same specs
validate TOML files, ``with_(...)`` overrides and CLI options, so an error always names the file,
the dotted field path and the valid range, and an unknown key gets a did-you-mean suggestion.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Field:
    """One validated config field.

    kind: "float", "int", "str", "bool", "floats" (list of floats) or "str_or_float".
    lo/hi: inclusive bounds unless lo_open/hi_open; None means unbounded.
    choices: allowed strings for kind "str".
    optional: None is a valid value (it always means "off" or "ideal", never a sentinel).
    """

    name: str
    kind: str
    default: Any = None
    doc: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    unit: str = ""

    def range_text(self) -> str:
        """Human-readable valid range, used in error messages and `xbar devices show`."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.lo is None and self.hi is None:
            text = {"float": "a finite number", "int": "an integer", "str": "a string",
                    "bool": "true or false", "floats": "a list of finite numbers",
                    "str_or_float": "a string or a number"}[self.kind]
        else:
            left = "(" if self.lo_open else "["
            right = ")" if self.hi_open else "]"
            lo = "-inf" if self.lo is None else _fmt(self.lo)
            hi = "inf" if self.hi is None else _fmt(self.hi)
            noun = "an integer" if self.kind == "int" else "a number"
            text = f"{noun} in {left}{lo}, {hi}{right}"
        if self.optional:
            text += " (or omitted)"
        return text


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def where_text(file: str | os.PathLike | None, path: str) -> str:
    """'file.toml: field' or just 'field' when there is no file."""
    return f"{file}: {path}" if file else path


def validate_value(field: Field, value: Any, *, file=None, prefix: str = "") -> Any:
    """Check one value against its Field and return it normalised (float/int/tuple)."""
    path = f"{prefix}{field.name}"
    loc = where_text(file, path)
    if value is None:
        if field.optional:
            return None
        raise ConfigError(f"{loc} is required: expected {field.range_text()}")
    k = field.kind
    if k == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{loc} = {value!r}: expected true or false")
        return value
    if k == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{loc} = {value!r}: expected {field.range_text()}")
        if field.choices and value not in field.choices:
            raise ConfigError(f"{loc} = {value!r}: expected {field.range_text()}"
                              + suggest(value, field.choices))
        return value
    if k == "str_or_float":
        if isinstance(value, str):
            if field.choices and value not in field.choices:
                raise ConfigError(f"{loc} = {value!r}: expected a number or one of "
                                  + ", ".join(repr(c) for c in field.choices) + suggest(value, field.choices))
            return value
        return _check_number(field, value, loc, "float")
    if k == "floats":
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not hasattr(value, "__iter__"):
            raise ConfigError(f"{loc} = {value!r}: expected a list of numbers")
        out = tuple(_check_number(field, v, f"{loc}[{i}]", "float") for i, v in enumerate(value))
        if not out:
            raise ConfigError(f"{loc}: expected a non-empty list of numbers")
        return out
    return _check_number(field, value, loc, k)


def _check_number(field: Field, value: Any, loc: str, kind: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_np_number(value):
        raise ConfigError(f"{loc} = {value!r}: expected {field.range_text()}")
    if kind == "int":
        # inf/nan have no integer value (int() would raise), and 2.5 is not an integer
        if not isinstance(value, int) and not (math.isfinite(float(value)) and float(value).is_integer()):
            raise ConfigError(f"{loc} = {value!r}: expected {field.range_text()}")
        value = int(value)
    else:
        try:
            value = float(value)
        except OverflowError:   # an integer beyond float range, e.g. 10**400
            raise ConfigError(f"{loc} = {value!r}: expected {field.range_text()}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{loc} = {value!r}: expected {field.range_text()}")
    lo, hi = field.lo, field.hi
    if lo is not None and (value < lo or (field.lo_open and value == lo)):
        raise ConfigError(f"{loc} = {value!r} is out of range: expected {field.range_text()}")
    if hi is not None and (value > hi or (field.hi_open and value == hi)):
        raise ConfigError(f"{loc} = {value!r} is out of range: expected {field.range_text()}")
    return value


def _is_np_number(value: Any) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, (np.integer, np.floating))


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(data: Mapping[str, Any], known: Iterable[str], *, file=None, prefix: str = "") -> None:
    """Reject keys that are not in `known`, with a did-you-mean suggestion and the valid list."""
    known = list(known)
    for key in data:
        if key not in known:
            shown = key if isinstance(key, str) and key.isprintable() and key.strip() else repr(key)
            loc = where_text(file, f"{prefix}{shown}")
            raise ConfigError(f"{loc}: unknown key{suggest(key, known)}; valid keys: {', '.join(known)}")


def validate_fields(fields: Sequence[Field], data: Mapping[str, Any], *, file=None,
                    prefix: str = "", base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate `data` against `fields`; missing fields come from `base`, else the field default."""
    check_keys(data, [f.name for f in fields], file=file, prefix=prefix)
    out: dict[str, Any] = {}
    for f in fields:
        if f.name in data:
            raw = data[f.name]
        elif base is not None and f.name in base:
            out[f.name] = base[f.name]
            continue
        else:
            raw = f.default
        out[f.name] = validate_value(f, raw, file=file, prefix=prefix)
    return out


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML file; a syntax error becomes a ConfigError naming the file and line."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, expected a .toml file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}, line {line}); TOML files must be "
                          "saved as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: malformed TOML: {exc}") from None


def load_named_toml(path: str | os.PathLike) -> dict[str, Any]:
    """A preset file's table, its `name` defaulting to the file's stem."""
    data = load_toml(path)
    data.setdefault("name", Path(path).stem)
    return data


def search_dirs(kind: str) -> list[Path]:
    """Where presets of `kind` ("devices", "networks", "experiments") are looked up, in order.

    1. every directory in $XBAR_PATH (os.pathsep-separated), and its `kind/` subfolder;
    2. the repository's top-level `kind/` folder (source checkouts and editable installs);
    3. the copy shipped inside the wheel (`xbar/_presets/kind`).
    """
    dirs: list[Path] = []
    for entry in os.environ.get("XBAR_PATH", "").split(os.pathsep):
        if entry:
            base = Path(entry).expanduser()
            dirs += [base / kind, base]
    here = Path(__file__).resolve().parent
    dirs.append(here.parent / kind)
    dirs.append(here / "_presets" / kind)
    return [d for d in dirs if d.is_dir()]


def preset_names(kind: str) -> list[str]:
    """All preset names of `kind` visible on the search path (first one found wins)."""
    names: dict[str, Path] = {}
    for d in search_dirs(kind):
        for f in sorted(d.glob("*.toml")):
            names.setdefault(f.stem, f)
    return sorted(names)


def find_preset(kind: str, name: str) -> Path:
    """Resolve a preset name or a path to a TOML file; unknown names list the known ones."""
    p = Path(name)
    if p.suffix == ".toml" or os.sep in name or "/" in name:
        if p.is_file():
            return p
        hint = ""
        if p.stem in preset_names(kind):
            hint = f"; the preset name {p.stem!r} works from any folder"
        raise ConfigError(f"{kind[:-1]} file {name!r} not found (relative to {Path.cwd()}){hint}")
    for d in search_dirs(kind):
        f = d / f"{name}.toml"
        if f.is_file():
            return f
    known = preset_names(kind)
    raise ConfigError(f"unknown {kind[:-1]} {name!r}{suggest(name, known)}; known: {', '.join(known)}"
                      f" (or pass a path to a .toml file, or add a folder to XBAR_PATH)")


def parse_tile(text: str) -> tuple[int, int]:
    """'64x64' -> (64, 64); errors say what to write."""
    try:
        r, c = str(text).lower().split("x")
        rows, cols = int(r), int(c)
        if rows < 1 or cols < 1:
            raise ValueError
        return rows, cols
    except ValueError:
        raise ConfigError(f"tile = {text!r}: expected ROWSxCOLS with integers >= 1, e.g. '64x64'") from None


def human_time(t: float) -> str:
    """Seconds as a short readable time: 3600 -> '1 h', 3.1536e7 -> '1 y', 90 -> '1.5 min'."""
    for unit, size in (("y", 31536000.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= size:
            return f"{t / size:.3g} {unit}"
    return f"{t:.3g} s"


class FieldConfig:
    """Base of the frozen configs declared by Field specs (TrainConfig, PruneConfig, CostConstants).

    A subclass sets ``FIELDS`` (or overrides :meth:`fields` when the list grows with a registry),
    ``LABEL`` (names the object in messages, e.g. "TrainConfig") and ``SOURCE`` (the default
    ``file`` of :meth:`from_dict`, e.g. "train config"). Keywords are validated like a TOML table;
    :meth:`check` runs after, for what one field cannot say alone. Instances are immutable:
    :meth:`with_` returns a new one.
    """

    FIELDS: tuple[Field, ...] = ()
    LABEL = "config"
    SOURCE = "config"
    LIST_VALID = False    # with_'s unknown-field message lists every valid name

    @classmethod
    def fields(cls) -> tuple[Field, ...]:
        return cls.FIELDS

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls.fields())

    def __init__(self, **values: Any):
        fields = self.fields()
        check_keys(values, [f.name for f in fields], file=self.where())
        data = self.normalise({f.name: values.get(f.name, f.default) for f in fields})
        checked = validate_fields(fields, data, file=self.where())
        self.check(checked)
        for k, v in checked.items():
            object.__setattr__(self, k, v)

    def where(self) -> str | None:
        """What error messages name as the source of a bad value (the class, or a file)."""
        return self.LABEL

    def normalise(self, values: dict[str, Any]) -> dict[str, Any]:
        """Turn accepted alternative spellings into the field's own (before validation)."""
        return values

    def check(self, values: dict[str, Any]) -> None:
        """Cross-field checks after every field passed its own (ConfigError)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, file: str | None = None):
        """Validate a plain dict (e.g. a TOML table); unknown keys get a did-you-mean."""
        return cls(**validate_fields(cls.fields(), dict(data), file=file or cls.SOURCE))

    def with_(self, **changes: Any):
        names = self.field_names()
        for k in changes:
            if k not in names:
                raise ConfigError(f"{self.LABEL}: unknown field {k!r}{suggest(k, names)}"
                                  + (f"; valid: {', '.join(names)}" if self.LIST_VALID else ""))
        return type(self)(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values, in field order."""
        return {f: getattr(self, f) for f in self.field_names()}

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self.LABEL} is immutable: use with_({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{self.LABEL} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.as_dict() == self.as_dict()

    def __hash__(self) -> int:
        return hash((type(self), tuple((k, _hashable(v)) for k, v in self.as_dict().items())))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
