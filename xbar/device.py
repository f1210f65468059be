"""Memristive devices: a device's parameters and which physics model describes each effect.

A :class:`Device` is pure data (a frozen dataclass validated from TOML or keywords): its levels,
its window and which model describes each effect. The flat fields (``program_noise_rel``,
``read_noise_rel``, ``drift_nu_*``) are the constant models; a TOML table ``[program_noise]``,
``[read_noise]`` or ``[drift]`` with ``model = "<name>"`` picks a state- or time-dependent model from
:mod:`xbar.physics` instead, and ``[read_iv]`` a nonlinear read I–V curve (default: ohmic); the
models themselves (writes, read variance, drift, I–V) live there and the crossbar's
:mod:`xbar.tile.physics` applies them. Here too: snapping to the levels (`snap_to_levels`) and the
NeuroSim pulse response (`pulse_curve_a`, `pulse_response`, `pulse_number`). Conductances are in
microsiemens (µS).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Field, find_preset, load_named_toml, preset_names, validate_fields, where_text
from .errors import ConfigError

READ_NOISE_KINDS = ("multiplicative", "additive")
# 1 S: far above any memristor (tens of µS to a few mS), and small enough that currents and read
# variances, (window x rows)^2, stay inside float32.
G_LIMIT_US = 1e6
# What a user's device file must say itself (shipped presets say it too): the window sets every
# current and noise scale, and the source is what makes the numbers checkable.
REQUIRED_IN_FILES = ("g_min_us", "g_max_us", "source")

# One list of fields: TOML keys, `with_` keywords and `xbar devices show` all come from here.
FIELDS: tuple[Field, ...] = (
    Field("name", "str", "custom", "Preset name."),
    Field("source", "str", "", "Citation for the parameters (paper, table)."),
    Field("description", "str", "", "One line shown by `xbar devices`."),
    Field("g_min_us", "float", 0.0, "Lowest programmable conductance.", lo=0.0, hi=G_LIMIT_US, unit="µS"),
    Field("g_max_us", "float", 1.0, "Highest programmable conductance.", lo=0.0, lo_open=True, hi=G_LIMIT_US,
          unit="µS"),
    Field("bits", "int", None, "2**bits evenly spaced levels in [g_min_us, g_max_us]; omit for analog.",
          lo=1, hi=8, optional=True),
    Field("levels_us", "floats", None, "Measured conductance levels (need not be uniform).",
          lo=0.0, optional=True, unit="µS"),
    Field("program_noise_rel", "float", 0.0,
          "Std of write noise per programming, relative to the window g_max - g_min.", lo=0.0, hi=1.0),
    Field("read_noise_rel", "float", 0.0,
          "Std of read noise per device per read: relative to G (multiplicative) or to the window "
          "(additive).", lo=0.0, hi=1.0),
    Field("read_noise_kind", "str", "multiplicative", "How read noise scales.", choices=READ_NOISE_KINDS),
    Field("g_d2d_rel", "float", 0.0, "Device-to-device spread of g_min/g_max (relative std).",
          lo=0.0, hi=1.0),
    Field("stuck_on_rate", "float", 0.0, "Fraction of devices stuck at g_max.", lo=0.0, hi=1.0),
    Field("stuck_off_rate", "float", 0.0, "Fraction of devices stuck at g_min.", lo=0.0, hi=1.0),
    Field("drift_nu_mean", "float", 0.0, "Mean drift exponent nu in G(t) = G(t0) (t/t0)^-nu.",
          lo=0.0, hi=1.0),
    Field("drift_nu_std", "float", 0.0, "Device-to-device std of nu.", lo=0.0, hi=1.0),
    Field("drift_t0_s", "float", 20.0, "Time after programming at which G is as programmed.",
          lo=0.0, lo_open=True, unit="s"),
    Field("pulse_levels", "int", None, "Number of states reachable by identical pulses (in-situ).",
          lo=2, hi=100000, optional=True),
    Field("nonlinearity_ltp", "float", 0.0, "NeuroSim nonlinearity label of potentiation (0 = linear).",
          lo=-20.0, hi=20.0),
    Field("nonlinearity_ltd", "float", 0.0, "NeuroSim nonlinearity label of depression (0 = linear).",
          lo=-20.0, hi=20.0),
    Field("c2c_rel", "float", 0.0, "Cycle-to-cycle std per pulse, relative to the window.", lo=0.0, hi=1.0),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)
MODEL_KINDS = ("program_noise", "read_noise", "drift", "read_iv")


def _model_tables(tables: dict[str, Any], file: str | None) -> dict[str, dict]:
    """Validate model tables ({"model": name, ...}) now, so a bad one fails before any work."""
    from .physics import get_model
    out = {}
    for kind, spec in tables.items():
        if spec is None:
            out[kind] = None
            continue
        if not isinstance(spec, dict):
            raise ConfigError(f"{where_text(file, kind)}: expected a table with model = \"<name>\" "
                              f"(e.g. [{kind}] model = \"constant\"), got {spec!r}")
        out[kind] = get_model(kind, spec, file=file).as_dict()
    return out


@dataclass(frozen=True)
class Device:
    """A memristive device: its programmable conductance levels and its non-idealities.

    Build one with :meth:`preset`, :meth:`from_toml` or :meth:`from_dict`; derive variants with
    :meth:`with_`. Every non-ideality defaults to off.
    """

    name: str = "custom"
    source: str = ""
    description: str = ""
    g_min_us: float = 0.0
    g_max_us: float = 1.0
    bits: int | None = None
    levels_us: tuple[float, ...] | None = None
    program_noise_rel: float = 0.0
    read_noise_rel: float = 0.0
    read_noise_kind: str = "multiplicative"
    g_d2d_rel: float = 0.0
    stuck_on_rate: float = 0.0
    stuck_off_rate: float = 0.0
    drift_nu_mean: float = 0.0
    drift_nu_std: float = 0.0
    drift_t0_s: float = 20.0
    pulse_levels: int | None = None
    nonlinearity_ltp: float = 0.0
    nonlinearity_ltd: float = 0.0
    c2c_rel: float = 0.0
    # Model tables ({"model": name, **params}) chosen in the TOML; None = the constant model.
    program_noise: dict | None = dataclasses.field(default=None, hash=False)
    read_noise: dict | None = dataclasses.field(default=None, hash=False)
    drift: dict | None = dataclasses.field(default=None, hash=False)
    read_iv: dict | None = dataclasses.field(default=None, hash=False)
    file: str | None = dataclasses.field(default=None, compare=False, repr=False)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str | None = None) -> Device:
        """Validate a plain dict (e.g. a parsed TOML table); errors name `file` and the field."""
        data = dict(data)
        tables = {k: data.pop(k) for k in MODEL_KINDS if k in data}
        values = validate_fields(FIELDS, data, file=file)
        values.update(_model_tables(tables, file))
        dev = cls(**values, file=file)
        dev._check_consistency()
        return dev

    @classmethod
    def from_toml(cls, path: str | Path) -> Device:
        """Load a device from a TOML file (top-level keys are the fields of :data:`FIELDS`)."""
        data = load_named_toml(path)
        dev = cls.from_dict(data, file=str(path))   # unknown keys and bad values first
        missing = [k for k in REQUIRED_IN_FILES if k not in data]
        if missing or not dev.source.strip():
            missing = missing or ["source"]
            raise ConfigError(f"{where_text(str(path), missing[0])} is required in a device file "
                              f"(missing: {', '.join(missing)}): give the conductance window g_min_us and "
                              "g_max_us in µS and a source = \"...\" citation (paper, table, or "
                              "\"illustrative\")")
        return dev

    @classmethod
    def preset(cls, name: str) -> Device:
        """A shipped or user preset by name (see `xbar devices`), or a path to a TOML file."""
        return cls.from_toml(find_preset("devices", name))

    @staticmethod
    def presets() -> list[str]:
        """Names of all presets on the search path."""
        return preset_names("devices")

    def with_(self, **changes: Any) -> Device:
        """A copy with some fields changed, validated like a TOML file.

        Setting `bits` clears a measured `levels_us` table and vice versa, so that
        ``Device.preset("gst-pcm").with_(bits=3)`` means what it says.
        """
        base = self.as_dict()
        if "bits" in changes and "levels_us" not in changes:
            base["levels_us"] = None
        if "levels_us" in changes and "bits" not in changes:
            base["bits"] = None
        where = f"{self.name}.with_()"
        changes = dict(changes)
        tables = _model_tables({k: changes.pop(k) for k in MODEL_KINDS if k in changes}, self.file or where)
        values = validate_fields(FIELDS, changes, file=where, base=base)
        values.update(tables)
        dev = dataclasses.replace(self, **values)
        dev._check_consistency(file=where)
        return dev

    def as_dict(self) -> dict[str, Any]:
        """Field values as a plain dict (TOML-ready; None fields included; model tables if any)."""
        out = {f: getattr(self, f) for f in FIELD_NAMES}
        out.update({k: getattr(self, k) for k in MODEL_KINDS if getattr(self, k) is not None})
        return out

    def models(self) -> tuple:
        """(program noise, read noise, drift, read I–V) model objects of :mod:`xbar.physics`.

        A model table from the TOML wins; otherwise the constant models built from the flat fields.
        """
        from .physics import get_model
        file = self.file
        flat = {"program_noise": {"model": "constant", "rel": self.program_noise_rel},
                "read_noise": {"model": "constant", "rel": self.read_noise_rel, "kind": self.read_noise_kind},
                "drift": {"model": "constant", "nu_mean": self.drift_nu_mean, "nu_std": self.drift_nu_std,
                          "t0_s": self.drift_t0_s},
                "read_iv": {"model": "constant"}}
        return tuple(get_model(k, getattr(self, k) or flat[k], file=file) for k in MODEL_KINDS)

    def _check_consistency(self, file: str | None = None) -> None:
        file = file or self.file
        if self.g_min_us >= self.g_max_us:
            raise ConfigError(f"{where_text(file, 'g_min_us')} = {self.g_min_us} must be below "
                              f"g_max_us = {self.g_max_us}")
        if self.bits is not None and self.levels_us is not None:
            raise ConfigError(f"{where_text(file, 'bits')}: give either bits or levels_us, not both")
        if self.levels_us is not None:
            lv = np.asarray(self.levels_us)
            if len(lv) < 2 or np.any(np.diff(lv) <= 0):
                raise ConfigError(f"{where_text(file, 'levels_us')}: need at least 2 strictly increasing "
                                  f"levels, got {list(self.levels_us)}")
            if lv[0] < self.g_min_us - 1e-12 or lv[-1] > self.g_max_us + 1e-12:
                raise ConfigError(f"{where_text(file, 'levels_us')}: levels must lie in "
                                  f"[g_min_us, g_max_us] = [{self.g_min_us}, {self.g_max_us}]")
        for kind, flat in (("program_noise", ("program_noise_rel",)), ("read_noise", ("read_noise_rel",)),
                           ("drift", ("drift_nu_mean", "drift_nu_std"))):
            if getattr(self, kind) is not None and any(getattr(self, f) for f in flat):
                raise ConfigError(f"{where_text(file, kind)}: a [{kind}] model table and {' / '.join(flat)} "
                                  "both describe this effect; keep one")
        if self.stuck_on_rate + self.stuck_off_rate > 1.0:
            raise ConfigError(f"{where_text(file, 'stuck_on_rate')} + stuck_off_rate = "
                              f"{self.stuck_on_rate + self.stuck_off_rate} must be at most 1")

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def window_us(self) -> float:
        """g_max - g_min."""
        return self.g_max_us - self.g_min_us

    def levels(self) -> np.ndarray | None:
        """Programmable conductance levels in µS (ascending), or None for an analog device.

        From `levels_us`, else 2**bits uniform levels, else `pulse_levels` uniform levels
        (a pulse-programmed device reaches that many states), else analog.
        """
        if self.levels_us is not None:
            return np.asarray(self.levels_us, dtype=np.float64)
        n = 2 ** self.bits if self.bits is not None else self.pulse_levels
        if n is None:
            return None
        return np.linspace(self.g_min_us, self.g_max_us, n)

    @property
    def n_levels(self) -> int | None:
        lv = self.levels()
        return None if lv is None else len(lv)

    @property
    def is_uniform(self) -> bool:
        """True when the levels are evenly spaced over the full window (or the device is analog)."""
        return self.levels_us is None

    @property
    def is_ideal(self) -> bool:
        """No noise, no faults, no drift, no spread (levels may still be discrete)."""
        return (self.program_noise_rel == 0 and self.read_noise_rel == 0 and self.g_d2d_rel == 0
                and self.stuck_on_rate == 0 and self.stuck_off_rate == 0 and self.drift_nu_mean == 0
                and self.drift_nu_std == 0 and all(getattr(self, k) is None for k in MODEL_KINDS))

    def summary(self) -> str:
        """Short description of the levels: '3-bit', '97 levels', 'analog', '5 measured levels'."""
        if self.levels_us is not None:
            return f"{len(self.levels_us)} measured levels"
        if self.bits is not None:
            return f"{self.bits}-bit"
        if self.pulse_levels is not None:
            return f"{self.pulse_levels} levels"
        return "analog"


# ---- physics on arrays of devices --------------------------------------------------------------

def snap_to_levels(g: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
    """Nearest programmable level for each target conductance (ties go to the lower level)."""
    if levels is None:
        return g
    idx = np.searchsorted(levels, g)
    idx = np.clip(idx, 1, len(levels) - 1)
    lo = levels[idx - 1]
    hi = levels[idx]
    return np.where(g - lo <= hi - g, lo, hi)


def pulse_curve_a(nonlinearity: float, pulse_levels: int) -> float:
    """NeuroSim's A (in pulses) for a nonlinearity label: A = P_max / |label| (∞ for 0 = linear).

    NeuroSim maps its labels (e.g. 2.4 for Ag:a-Si LTP) to the curve parameter A through a
    fitted table; we use the simple monotone proxy A = P_max / |label|, which gives a linear
    response at label 0 and a stronger curvature for larger labels. Documented as an approximation.
    """
    if nonlinearity == 0:
        return float("inf")
    return (pulse_levels - 1) / abs(nonlinearity)


def pulse_response(p: np.ndarray, a: float, pulse_levels: int, g_min: float, g_max: float) -> np.ndarray:
    """G(P) = B (1 - exp(-P/A)) + g_min with B = (g_max - g_min) / (1 - exp(-P_max/A)).

    P is the (fractional) pulse number in [0, P_max]; A = inf gives the linear response.
    """
    p_max = pulse_levels - 1
    if not np.isfinite(a):
        return g_min + (g_max - g_min) * p / p_max
    b = (g_max - g_min) / (1.0 - np.exp(-p_max / a))
    return b * (1.0 - np.exp(-p / a)) + g_min


def pulse_number(g: np.ndarray, a: float, pulse_levels: int, g_min: float, g_max: float) -> np.ndarray:
    """Inverse of :func:`pulse_response`: the pulse number P that gives conductance g."""
    p_max = pulse_levels - 1
    if not np.isfinite(a):
        return (g - g_min) / (g_max - g_min) * p_max
    b = (g_max - g_min) / (1.0 - np.exp(-p_max / a))
    frac = np.clip((g - g_min) / b, 0.0, 1.0 - 1e-12)
    return -a * np.log1p(-frac)


def available_presets_text() -> str:
    return ", ".join(preset_names("devices"))
