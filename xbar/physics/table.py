"""Models from a table of measured levels: programming spread (and drift) per conductance level.

The CSV has a header and one row per measured level, levels strictly increasing:

    level_us, sigma_us[, nu_mean, nu_std]

Lines starting with '#' are comments. A device aimed at G_T takes the row of the nearest level
(ties go to the lower one). In a device TOML, ``file`` is relative to the TOML's folder; the
model keeps the columns themselves (``as_dict`` embeds them), so a saved run does not depend on
the CSV staying where it was.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config import Field, suggest, where_text
from ..errors import ConfigError
from .base import Drift, ProgramNoise, add_gaussian, clip_field, register

SOURCE = "measured levels from a CSV table (give the measurement's source in the device file)"
# column -> (lowest valid value, highest, range text)
COLUMNS = {
    "level_us": (0.0, 1e6, "a finite number in [0, 1000000] µS"),
    "sigma_us": (0.0, 1e6, "a finite number in [0, 1000000] µS"),
    "nu_mean": (0.0, 1.0, "a finite number in [0, 1]"),
    "nu_std": (0.0, 1.0, "a finite number in [0, 1]"),
}

_FILE = Field("file", "str", None, "CSV with columns level_us, sigma_us[, nu_mean, nu_std], relative to the "
              "device TOML.", optional=True)
_LEVELS = Field("levels_us", "floats", None, "Measured levels, strictly increasing (from `file` if omitted).",
                lo=0.0, hi=1e6, optional=True, unit="µS")


def read_csv(path: str | Path, needed: tuple[str, ...], *, where: str, given: str | None = None
             ) -> dict[str, np.ndarray]:
    """The columns of a measured table, checked.

    where: the TOML field that points here ("dev.toml: program_noise.file"); given: the path as
    written there (default: path).
    """
    p = Path(path)
    given = str(path) if given is None else given
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where} = {given!r}: no such file (looked at {p.resolve()}); give a CSV path "
                          "relative to the device TOML") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} = {given!r}: cannot read the table: {exc}") from None
    p_text = f"{p} ({where})"
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    rows = list(csv.reader(lines))
    if not rows:
        raise ConfigError(f"{p_text}: empty table; expected a header {', '.join(needed)} and one row per level")
    header = [h.strip() for h in rows[0]]
    for col in needed:
        if col not in header:
            raise ConfigError(f"{p_text}: column {col!r} is missing{suggest(col, header)}; columns found: "
                              f"{', '.join(header) or 'none'}; needed: {', '.join(needed)}")
    for col in header:
        if col not in COLUMNS:
            raise ConfigError(f"{p_text}: unknown column {col!r}{suggest(col, COLUMNS)}; "
                              f"valid: {', '.join(COLUMNS)}")
    out: dict[str, list[float]] = {col: [] for col in header}
    for n, row in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise ConfigError(f"{p_text}: row {n} has {len(row)} values, expected {len(header)} "
                              f"({', '.join(header)})")
        for col, cell in zip(header, row):
            try:
                out[col].append(float(cell))
            except ValueError:
                raise ConfigError(f"{p_text}: column {col!r}, row {n} = {cell.strip()!r}: expected "
                                  f"{COLUMNS[col][2]}") from None
    return check_columns({c: np.asarray(v) for c, v in out.items()}, where=p_text, row_word="row")


def check_columns(cols: dict[str, Any], *, where: str, row_word: str = "entry") -> dict[str, np.ndarray]:
    """Finite, in range, same lengths, at least one level, levels strictly increasing.

    row_word "row": the columns come from a CSV; "entry": from the model's parameters, and the
    messages name the parameters (levels_us) rather than the CSV columns (level_us).
    """
    def name(col: str) -> str:
        return f"column {col!r}" if row_word == "row" else repr(_field(col))

    cols = {c: np.asarray(v, dtype=np.float64) for c, v in cols.items() if v is not None}
    n = len(cols["level_us"])
    if n == 0:
        raise ConfigError(f"{where}: no levels; expected at least one row")
    for col, v in cols.items():
        lo, hi, text = COLUMNS[col]
        if len(v) != n:
            raise ConfigError(f"{where}: {name(col)} has {len(v)} values but {name('level_us')} has {n}")
        bad = np.flatnonzero(~np.isfinite(v) | (v < lo) | (v > hi))
        if bad.size:
            i = int(bad[0])
            raise ConfigError(f"{where}: {name(col)}, {row_word} {i + 1} = {float(v[i])!r}: expected {text}")
    lv = cols["level_us"]
    down = np.flatnonzero(np.diff(lv) <= 0)
    if down.size:
        i = int(down[0]) + 1
        raise ConfigError(f"{where}: {name('level_us')} must be strictly increasing: {row_word} {i + 1} = "
                          f"{float(lv[i])!r} after {float(lv[i - 1])!r}")
    return cols


def nearest(levels: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Index of the nearest level for each g (ties go to the lower level)."""
    if len(levels) == 1:
        return np.zeros(np.shape(g), dtype=np.intp)
    idx = np.clip(np.searchsorted(levels, g), 1, len(levels) - 1)
    return np.where(g - levels[idx - 1] <= levels[idx] - g, idx - 1, idx)


def _load(cls, values: dict[str, Any], needed: tuple[str, ...], *, file, prefix: str) -> dict[str, Any]:
    """Fill the columns from values['file'] unless they are given inline; check them."""
    inline = {c: values.get(_field(c)) for c in needed}
    if inline["level_us"] is None:
        if values["file"] is None:
            raise ConfigError(f"{where_text(file, prefix + 'file')} is required: a CSV with columns "
                              f"{', '.join(needed)} (or give the columns inline)")
        path = Path(values["file"]).expanduser()
        if file is not None and not path.is_absolute():
            path = Path(file).parent / path
        cols = read_csv(path, needed, where=where_text(file, prefix + "file"), given=values["file"])
        values["file"] = str(path)
    else:
        missing = [c for c in needed if inline[c] is None]
        if missing:
            raise ConfigError(f"{where_text(file, prefix + _field(missing[0]))} is required with levels_us: "
                              "expected a list with one value per level")
        cols = check_columns(inline, where=where_text(file, prefix.rstrip(".") or cls.name))
    for c in needed:
        values[_field(c)] = tuple(float(x) for x in cols[c])
    return values


def _field(column: str) -> str:
    """The model parameter holding a CSV column (the level column is plural as a parameter)."""
    return "levels_us" if column == "level_us" else column


@register
class TableProgramNoise(ProgramNoise):
    """G = G_T + sigma(nearest level) N(0, 1): the measured spread of the nearest level."""

    name: ClassVar[str] = "table"
    source: ClassVar[str] = SOURCE
    COLUMNS_NEEDED = ("level_us", "sigma_us")
    FIELDS = (
        _FILE, _LEVELS,
        Field("sigma_us", "floats", None, "Measured programming std per level.", lo=0.0, hi=1e6, optional=True,
              unit="µS"),
        clip_field("window"),
    )

    @classmethod
    def check(cls, values, *, file=None, prefix=""):
        return _load(cls, values, cls.COLUMNS_NEEDED, file=file, prefix=prefix)

    def sigma(self, g_target: np.ndarray) -> np.ndarray:
        lv = np.asarray(self.levels_us)
        return np.asarray(self.sigma_us)[nearest(lv, np.asarray(g_target, dtype=np.float64))]

    def write(self, g_target, lo, hi, window_us, rng):
        return add_gaussian(g_target, self.sigma(g_target), self.clip, lo, hi, rng)


@register
class TableDrift(Drift):
    """G(t) = G(t0) (t / t0)^-nu for t > t0, nu = max(N(nu_mean, nu_std), 0) of the nearest level."""

    name: ClassVar[str] = "table"
    source: ClassVar[str] = SOURCE
    state_dependent: ClassVar[bool] = True
    COLUMNS_NEEDED = ("level_us", "nu_mean", "nu_std")
    FIELDS = (
        _FILE, _LEVELS,
        Field("nu_mean", "floats", None, "Mean drift exponent per level.", lo=0.0, hi=1.0, optional=True),
        Field("nu_std", "floats", None, "Std of the drift exponent per level.", lo=0.0, hi=1.0, optional=True),
        Field("t0_s", "float", 20.0, "Time after programming at which G is as programmed.", lo=0.0,
              lo_open=True, unit="s"),
    )

    @classmethod
    def check(cls, values, *, file=None, prefix=""):
        return _load(cls, values, cls.COLUMNS_NEEDED, file=file, prefix=prefix)

    def draw_nu(self, g_target, rng):
        i = nearest(np.asarray(self.levels_us), np.asarray(g_target, dtype=np.float64))
        mean, std = np.asarray(self.nu_mean)[i], np.asarray(self.nu_std)[i]
        return np.maximum(mean + std * rng.standard_normal(np.shape(g_target)), 0.0)

    def apply(self, g_prog, nu, t_s):
        if nu is None or t_s is None or not t_s > self.t0_s:
            return g_prog
        return g_prog * (t_s / self.t0_s) ** (-nu)
