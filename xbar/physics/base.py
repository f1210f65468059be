"""Device-effect models: the small objects a crossbar calls to write, read and drift its devices.

A model is one effect (programming noise, read noise, drift or the read I–V curve) as a few functions of the
conductance G (µS) and the time t (s) since programming, with its parameters declared once as
:class:`~xbar.config.Field` specs (so TOML, errors and `xbar devices show` all come from them) and
a citation. Models register themselves by kind and name; a device TOML picks one per kind:

    [program_noise]
    model = "pcm-aihwkit"
    scale = 1.0

and the crossbar builds it with ``get_model("program_noise", table, file=path)``. Models hold no
random state: every draw takes an explicit ``numpy.random.Generator``, and no method changes
the arrays it is given.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..config import Field, suggest, validate_fields, where_text
from ..errors import ConfigError

KINDS = ("program_noise", "read_noise", "drift", "read_iv")
# Class attributes a parameter may not shadow (ConstantReadNoise has a parameter `kind`).
_RESERVED = frozenset({"kind", "name", "source", "FIELDS", "params", "state_dependent", "needs_g_prog", "linear",
                       "has_even", "has_cubic"})
# kind -> model name -> class; filled by @register as the model modules are imported.
REGISTRY: dict[str, dict[str, type[Model]]] = {k: {} for k in KINDS}


class Model:
    """One device effect with validated parameters; subclasses set the class variables below."""

    kind: ClassVar[str]
    name: ClassVar[str]
    source: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[Field, ...]] = ()

    def __init__(self, **params: Any) -> None:
        """Take already-validated values (missing ones get the field default); see from_params."""
        names = [f.name for f in self.FIELDS]
        unknown = [k for k in params if k not in names]
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown parameter {unknown[0]!r}; "
                            f"valid: {', '.join(names)}")
        self.params: dict[str, Any] = {f.name: params.get(f.name, f.default) for f in self.FIELDS}
        for key, value in self.params.items():
            if key not in _RESERVED:   # a parameter named like a class attribute stays in .params only
                setattr(self, key, value)

    @classmethod
    def from_params(cls, params: dict[str, Any], *, file=None, prefix: str = "") -> Model:
        """Validate a TOML table (without or with its ``model`` key) and build the model.

        Errors name `file`, the dotted path (``prefix`` + field, e.g. "program_noise.coeffs_us")
        and the valid range; unknown keys get a did-you-mean.
        """
        params = dict(params)
        given = params.pop("model", cls.name)
        if given != cls.name:
            raise ConfigError(f"{where_text(file, prefix + 'model')} = {given!r}: this table is for "
                              f"model {cls.name!r}")
        values = validate_fields(cls.FIELDS, params, file=file, prefix=prefix)
        values = cls.check(values, file=file, prefix=prefix)
        return cls(**values)

    @classmethod
    def check(cls, values: dict[str, Any], *, file=None, prefix: str = "") -> dict[str, Any]:
        """Checks across fields (after each field is in range); return the values to build from."""
        return values

    def as_dict(self) -> dict[str, Any]:
        """{"model": name, **params}: TOML/JSON-ready (tuples become lists), from_params reads it back."""
        out: dict[str, Any] = {"model": self.name}
        for key, value in self.params.items():
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params == other.params  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.params))))

    def __repr__(self) -> str:
        short = {k: v for k, v in self.params.items() if not isinstance(v, tuple) or len(v) <= 4}
        args = ", ".join(f"{k}={v!r}" for k, v in short.items())
        return f"{type(self).__name__}({args})"


class ProgramNoise(Model):
    """What a device holds after one programming aimed at g_target."""

    kind: ClassVar[str] = "program_noise"

    def write(self, g_target: np.ndarray, lo, hi, window_us: float, rng: np.random.Generator) -> np.ndarray:
        """Conductance (µS, float64) after one programming of devices aimed at `g_target` (µS).

        lo, hi: the devices' own window (scalars or arrays broadcastable to g_target); the model
        decides whether and where to clip. window_us: the nominal g_max - g_min.
        """
        raise NotImplementedError


class ReadNoise(Model):
    """Per-device variance of one read."""

    kind: ClassVar[str] = "read_noise"
    # True when the variance depends on the conductance as programmed (before drift), so the
    # caller should pass g_prog= to variance() after drift; False: g alone decides.
    needs_g_prog: ClassVar[bool] = False

    def variance(self, g: np.ndarray, t_s: float | None, window_us: float, *,
                 g_prog: np.ndarray | None = None) -> np.ndarray:
        """Variance (µS²) of one read of devices holding `g` (µS) `t_s` seconds after programming.

        t_s None: right after programming. g_prog: the conductance as programmed, before drift
        (None: g). Returns an array broadcastable to g.
        """
        raise NotImplementedError


class Drift(Model):
    """How the conductance moves after programming."""

    kind: ClassVar[str] = "drift"
    # False: the per-device parameter is a property of the device, drawn once per crossbar
    # (draw_nu ignores the values of g_target and uses only its shape); True: it depends on the
    # target, so it is drawn at each programming from the targets.
    state_dependent: ClassVar[bool] = False

    def draw_nu(self, g_target: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Per-device drift parameters (shape of g_target), or None when this model never drifts."""
        raise NotImplementedError

    def apply(self, g_prog: np.ndarray, nu: np.ndarray, t_s: float) -> np.ndarray:
        """Conductance `t_s` seconds after programming of devices programmed to `g_prog` (µS)."""
        raise NotImplementedError


class ReadIV(Model):
    """The cell's current-voltage curve during a read: I = G V + NL2(G) V|V| + NL3(G) V^3.

    The linear (ohmic) cell is the "constant" model. A nonlinear model gives, per device, the
    coefficients of the V² and V³ terms; the read path applies the input as a voltage
    V = x v_read (x in [-1, 1] after the DAC) and senses the currents. `v_max_v` is the largest
    read voltage the fit is validated for: a crossbar refuses a larger v_read.
    """

    kind: ClassVar[str] = "read_iv"
    v_max_v: float = math.inf
    even_term: str = "odd"   # how the V² term treats negative reads (a parameter of models that have one)

    @property
    def has_even(self) -> bool:
        """True when the V² term can be nonzero."""
        return False

    @property
    def has_cubic(self) -> bool:
        """True when the V³ term can be nonzero."""
        return False

    @property
    def linear(self) -> bool:
        """True when the model adds nothing to the ohmic current."""
        return not (self.has_even or self.has_cubic)

    def coefficients(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(NL2 in µS/V, NL3 in µS/V²) of devices holding `g` (µS), arrays of g's shape."""
        raise NotImplementedError


def register(cls: type[Model]) -> type[Model]:
    """Class decorator: make `cls` selectable as ``model = cls.name`` in the tables of `cls.kind`."""
    if getattr(cls, "kind", None) not in REGISTRY:
        raise TypeError(f"{cls.__name__}.kind = {getattr(cls, 'kind', None)!r}: expected one of "
                        f"{', '.join(KINDS)}")
    known = REGISTRY[cls.kind].get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"{cls.kind} model {cls.name!r} is already registered by "
                        f"{known.__module__}.{known.__qualname__}")
    REGISTRY[cls.kind][cls.name] = cls
    return cls


def model_names(kind: str) -> list[str]:
    """Registered model names of `kind`, sorted."""
    _check_kind(kind)
    return sorted(REGISTRY[kind])


def get_model(kind: str, spec: dict[str, Any] | Model | None, *, file=None) -> Model:
    """Build the `kind` model a TOML table asks for: ``{"model": "pcm-aihwkit", ...params}``.

    None gives the "constant" model with its defaults, which does nothing; a Model of the right
    kind is returned as is.
    """
    _check_kind(kind)
    if spec is None:
        return REGISTRY[kind]["constant"]()
    if isinstance(spec, Model):
        if spec.kind != kind:
            raise ConfigError(f"{where_text(file, kind)}: got a {spec.kind} model ({spec.name!r})")
        return spec
    known = model_names(kind)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where_text(file, kind)} = {spec!r}: expected a table with model = one of "
                          + ", ".join(repr(k) for k in known))
    name = spec.get("model")
    if name is None:
        raise ConfigError(f"{where_text(file, kind + '.model')} is required: expected one of "
                          + ", ".join(repr(k) for k in known))
    if name not in REGISTRY[kind]:
        raise ConfigError(f"{where_text(file, kind + '.model')} = {name!r}: unknown {kind} model"
                          f"{suggest(str(name), known)}; known: {', '.join(known)}")
    return REGISTRY[kind][name].from_params(spec, file=file, prefix=kind + ".")


def _check_kind(kind: str) -> None:
    if kind not in REGISTRY:
        raise ConfigError(f"unknown model kind {kind!r}{suggest(str(kind), KINDS)}; known: {', '.join(KINDS)}")


# ---- helpers the models share ------------------------------------------------------------------

CLIPS = ("window", "nonnegative", "none")


def clip_field(default: str) -> Field:
    """The `clip` parameter of programming-noise models (the source decides the default)."""
    return Field("clip", "str", default, "Where a written conductance is clipped: to the device's own "
                 "window [lo, hi], at 0 only, or not at all.", choices=CLIPS)


def clip(g: np.ndarray, how: str, lo, hi) -> np.ndarray:
    """Apply a `clip` choice (see clip_field) to written conductances."""
    if how == "window":
        return np.clip(g, lo, hi)
    if how == "nonnegative":
        return np.maximum(g, 0.0)
    return g


def add_gaussian(g_target: np.ndarray, sigma: np.ndarray, how: str, lo, hi,
                 rng: np.random.Generator) -> np.ndarray:
    """g_target + sigma * N(0, 1) per device, then clipped; the common write of the fitted models."""
    g = np.asarray(g_target, dtype=np.float64)
    return clip(g + sigma * rng.standard_normal(g.shape), how, lo, hi)
