"""Experiment specs (experiments/*.toml): a base, a grid, seeds and exclusions, validated and
expanded into runs, each with its store key."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import find_preset, load_toml, suggest, where_text
from ..errors import ConfigError, DataError
from ..store import run_key

SPEC_KEYS = ("name", "description", "command", "seeds", "missing_data", "base", "grid", "exclude")
COMMANDS = ("train", "prune")
MISSING_DATA = ("error", "skip")
DEVICE_PREFIX = "device."
HIST_BINS = 64


def _train_fields():
    from ..train.loop import FIELD_NAMES
    return FIELD_NAMES


def prune_fields():
    from ..prune import FIELD_NAMES
    return FIELD_NAMES


def _device_fields():
    from ..device import FIELD_NAMES
    return FIELD_NAMES


def _field(key: str, command: str):
    """The Field spec of a [base]/[grid] key (None if unknown: the key check names it)."""
    from ..device import FIELDS as DEVICE
    from ..prune import FIELDS as PRUNE
    from ..train.loop import FIELDS as TRAIN
    if key.startswith(DEVICE_PREFIX):
        fields, key = DEVICE, key[len(DEVICE_PREFIX):]
    else:
        fields = TRAIN + (PRUNE if command == "prune" else ())
    return next((f for f in fields if f.name == key), None)


@dataclass
class Run:
    """One point of the grid, resolved: what to train and under which key it is stored."""

    index: int
    key: str
    point: dict[str, Any]          # the grid values (and seed) that made this run
    config: dict[str, Any]         # the resolved TrainConfig as a plain dict

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.point.items())


@dataclass
class Experiment:
    """A validated sweep spec."""

    name: str
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    seeds: list[int] | None = None
    exclude: list[dict[str, Any]] = field(default_factory=list)
    missing_data: str = "error"
    command: str = "train"
    file: str = "<spec>"

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> Experiment:
        """From a preset name (experiments/NAME.toml) or a path to a TOML file."""
        path = find_preset("experiments", str(name_or_path))
        return cls.from_dict(load_toml(path), file=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str = "<spec>") -> Experiment:
        from ..config import check_keys
        check_keys(data, SPEC_KEYS, file=file)
        command = data.get("command", "train")
        if command not in COMMANDS:
            raise ConfigError(f"{where_text(file, 'command')} = {command!r}: expected one of "
                              + ", ".join(map(repr, COMMANDS)) + suggest(str(command), COMMANDS))
        name = data.get("name", Path(file).stem)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where_text(file, 'name')} = {name!r}: expected a non-empty string")
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise ConfigError(f"{where_text(file, 'base')}: expected a table of `xbar train` options")
        _check_option_keys(base, file, "base.", command)
        grid = data.get("grid")
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(f"{where_text(file, 'grid')}: the grid is empty; give at least one "
                              "[grid] key with a list of values, e.g. bits = [2, 3, 4]")
        _check_option_keys(grid, file, "grid.", command)
        for k, v in base.items():
            _check_value_type(v, _field(k, command), file, f"base.{k}")
        for k, v in grid.items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{where_text(file, 'grid.' + k)} = {_show(v)}: expected a non-empty list of values")
            for i, x in enumerate(v):
                _check_value_type(x, _field(k, command), file, f"grid.{k}[{i}]")
            if len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
                raise ConfigError(f"{where_text(file, 'grid.' + k)}: a value is repeated in {v!r}")
            if k == "seed":
                raise ConfigError(f"{where_text(file, 'grid.seed')}: put seeds in the top-level `seeds` list")
        overlap = sorted(set(base) & set(grid))
        if overlap:
            raise ConfigError(f"{file}: {', '.join(overlap)} set both in [base] and [grid]; keep one")
        seeds = data.get("seeds")
        if seeds is not None:
            if (not isinstance(seeds, list) or not seeds
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
                raise ConfigError(f"{where_text(file, 'seeds')} = {seeds!r}: expected a non-empty list of "
                                  "integers >= 0")
            if len(set(seeds)) != len(seeds):
                raise ConfigError(f"{where_text(file, 'seeds')}: a seed is repeated in {seeds!r}")
            if "seed" in base:
                raise ConfigError(f"{file}: seed set both in [base] and `seeds`; keep one")
        exclude = data.get("exclude", [])
        if isinstance(exclude, dict):
            exclude = [exclude]
        if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
            raise ConfigError(f"{where_text(file, 'exclude')}: expected [[exclude]] tables of key = value(s)")
        for i, e in enumerate(exclude):
            known = list(grid) + list(base) + ["seed"]
            for k in e:
                if k not in known:
                    raise ConfigError(f"{where_text(file, f'exclude[{i}].{k}')}: not a [grid] or [base] key"
                                      f"{suggest(k, known)}; valid: {', '.join(known)}")
        missing = data.get("missing_data", "error")
        if missing not in MISSING_DATA:
            raise ConfigError(f"{where_text(file, 'missing_data')} = {missing!r}: expected one of "
                              + ", ".join(map(repr, MISSING_DATA)))
        return cls(name=name, description=str(data.get("description", "")), base=dict(base), grid=dict(grid),
                   seeds=seeds, exclude=exclude, missing_data=missing, command=command, file=file)

    # -- identity ----------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """What defines the set of runs (not name or description)."""
        spec = {"base": self.base, "grid": self.grid, "seeds": self.seeds, "exclude": self.exclude,
                "missing_data": self.missing_data}
        return spec | ({"command": self.command} if self.command != "train" else {})

    def spec_hash(self) -> str:
        return _hash(self.spec())

    # -- expansion ---------------------------------------------------------------------------------
    def points(self) -> list[dict[str, Any]]:
        """The grid's points (with seed) after exclusions, in spec order."""
        keys = list(self.grid)
        seeds = self.seeds if self.seeds is not None else [self.base.get("seed", 1)]
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            for seed in seeds:
                point = dict(zip(keys, values))
                if self.seeds is not None:
                    point["seed"] = seed
                if not any(_matches(self.base | point, e) for e in self.exclude):
                    out.append(point)
        if not out:
            raise ConfigError(f"{self.file}: every run of the grid is excluded; nothing to run")
        return out

    def expand(self, *, check_data: bool = True, notes: list[str] | None = None) -> list[Run]:
        """Resolve every run (errors name the run and the field); drop runs of absent datasets
        when missing_data = 'skip' (a note says so)."""
        from ..train.loop import TrainConfig
        runs: list[Run] = []
        seen: dict[str, int] = {}
        absent = _absent_datasets(self, check_data)
        for i, point in enumerate(self.points()):
            options = _options(self.base | point)
            if options.get("dataset") in absent:
                if self.missing_data == "skip":
                    continue
                raise ConfigError(f"{self.file}: run {i + 1} ({_label(point)}): {absent[options['dataset']]}"
                                  " (set missing_data = \"skip\" in the spec to leave such runs out)")
            where = f"{self.file}, run {i + 1} ({_label(point)})"
            try:
                if self.command == "prune":
                    from ..prune import PruneConfig, check_supported
                    pnames = prune_fields()
                    popts = {k: v for k, v in options.items() if k in pnames}
                    cfg = TrainConfig.from_dict({k: v for k, v in options.items() if k not in pnames},
                                                file=where).resolve()
                    pcfg = PruneConfig.from_dict(popts, file=where).resolve()
                    check_supported(cfg.network, pcfg)
                    config = cfg.as_dict() | {"command": "prune"} | pcfg.as_dict()
                else:
                    config = TrainConfig.from_dict(options, file=where).resolve().as_dict()
            except ConfigError as exc:
                msg = str(exc)
                if f"run {i + 1}" not in msg:
                    msg = f"{self.file}: run {i + 1} ({_label(point)}): {msg}"
                raise ConfigError(msg) from None
            key = run_key(config)
            if key in seen:
                raise ConfigError(f"{self.file}: runs {seen[key] + 1} and {i + 1} resolve to the same "
                                  f"configuration ({_label(point)}); a grid value has no effect there")
            seen[key] = i
            runs.append(Run(i, key, point, config))
        if notes is not None:
            for ds, why in absent.items():
                if self.missing_data == "skip":
                    notes.append(f"skipping dataset {ds!r}: {why}")
        if not runs:
            raise ConfigError(f"{self.file}: no run left to do (all datasets absent: "
                              f"{', '.join(absent)})")
        return runs


def _check_option_keys(table: dict[str, Any], file: str, prefix: str, command: str = "train") -> None:
    fields = _train_fields() + (prune_fields() if command == "prune" else ())
    dev_fields = _device_fields()
    for k in table:
        shown = k if k.isprintable() else repr(k)[1:-1]   # one line, whatever the key holds
        if k.startswith(DEVICE_PREFIX):
            sub = k[len(DEVICE_PREFIX):]
            if sub not in dev_fields:
                raise ConfigError(f"{where_text(file, prefix + shown)}: unknown device field{suggest(sub, dev_fields)}; "
                                  f"valid: {', '.join(dev_fields)}")
        elif k not in fields and command == "train" and k in prune_fields():
            raise ConfigError(f"{where_text(file, prefix + shown)}: a pruning option; set command = \"prune\" at "
                              "the top of the spec to sweep `xbar prune` runs")
        elif k not in fields:
            raise ConfigError(f"{where_text(file, prefix + shown)}: unknown key{suggest(k, fields)}; valid: "
                              f"{', '.join(fields)}, or device.<field>")


_SCALARS = (str, int, float, bool)


def _show(v) -> str:
    """A value as the spec wrote it (TOML dates and times in their ISO form)."""
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return repr(v)


def _check_value_type(v, fld, file: str, path: str) -> None:
    """One value of [base] or of a [grid] list: a TOML string, number or boolean (a list of
    numbers for list fields such as device.levels_us), never a date, time or table.
    Ranges are checked later, per run, where the error can name the run."""
    per_run = " (one value per run; the grid's list holds the values to sweep)" if path.startswith("grid.") else ""
    if fld is not None and fld.kind == "floats":
        if not (isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise ConfigError(f"{where_text(file, path)} = {_show(v)}: expected a list of numbers, e.g. "
                              f"[0.0, 0.5, 1.0]{per_run}")
    elif not isinstance(v, _SCALARS):
        what = ("a TOML date/time" if isinstance(v, (datetime.date, datetime.time)) else
                "a table" if isinstance(v, dict) else "a list" if isinstance(v, list) else type(v).__name__)
        allowed = fld.range_text() if fld is not None else "a string, number or boolean"
        raise ConfigError(f"{where_text(file, path)} = {_show(v)}: {what} is not allowed here; expected "
                          f"{allowed}{per_run}")


def _options(merged: dict[str, Any]) -> dict[str, Any]:
    """Spec keys -> TrainConfig options: device.<field> keys join (sorted) into device_set."""
    out = {k: v for k, v in merged.items() if not k.startswith(DEVICE_PREFIX)}
    dev = {k[len(DEVICE_PREFIX):]: v for k, v in merged.items() if k.startswith(DEVICE_PREFIX)}
    if dev:
        parts = [out["device_set"]] if out.get("device_set") else []
        parts += [f"{k}={_toml_value(v)}" for k, v in sorted(dev.items())]
        out["device_set"] = ",".join(parts)
    return out


def _toml_value(v) -> str:
    """A value written as TOML; device_set keeps commas inside [...] and "..." together."""
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _matches(options: dict[str, Any], rule: dict[str, Any]) -> bool:
    for k, want in rule.items():
        have = options.get(k)
        wants = want if isinstance(want, list) else [want]
        if have not in wants:
            return False
    return True


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _absent_datasets(exp: Experiment, check: bool) -> dict[str, str]:
    """dataset -> why its files cannot be found, for datasets the spec uses."""
    if not check:
        return {}
    from .. import data as xdata
    names = set()
    for src in (exp.base.get("dataset"), *exp.grid.get("dataset", [])):
        if src is not None:
            names.add(src)
    if not names:
        names.add("digits")
    data_dirs = set(exp.grid.get("data_dir", [exp.base.get("data_dir")]))
    out = {}
    for ds in sorted(names):
        if ds not in xdata.DATASETS:
            continue   # the run's validation names it
        for dd in data_dirs:
            try:
                xdata.load(ds, "test", dd)
            except DataError as exc:
                first = str(exc).splitlines()[0]
                out[ds] = (first.split(": looked for")[0] + f" (searched {dd or 'the default folders'}; "
                           f"see `xbar data info {ds}`)")
    return out
