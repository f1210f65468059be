"""What a programmed crossbar holds: conductances, gains, offsets, bias, mask and time.

:class:`ArrayState` is plain data. ``gp0``/``gn0`` are the conductances as programmed (t = t0),
``gp``/``gn`` as they read now (after drift); all are (P, rows, out) in µS, P planes (bit slices).
``nu`` holds drift exponents drawn at programming by state-dependent drift models (n_dev, P, rows,
out), else None. The digital periphery applies ``alpha`` (column gain) times ``drift_compensation``,
adds ``beta`` (offset, on cells in use) and ``b_digital``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..kernels import rng as krng

FORMAT = "xbar-crossbar"
VERSION = 1
ARRAYS = ("gp0", "gn0", "gp", "gn", "sig", "alpha", "beta", "b_digital", "mask", "nu")
SCALARS = ("shape", "n_in", "has_bias_row", "t_s", "drift_compensation")


@dataclass
class ArrayState:
    shape: tuple[int, int]
    n_in: int
    has_bias_row: bool
    gp0: np.ndarray
    gn0: np.ndarray
    gp: np.ndarray
    gn: np.ndarray
    sig: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    b_digital: np.ndarray | None = None
    mask: np.ndarray | None = None
    nu: np.ndarray | None = None
    t_s: float | None = None
    drift_compensation: float = 1.0

    def to_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-ready scalars, arrays); None arrays are left out."""
        scalars = {k: getattr(self, k) for k in SCALARS}
        scalars["shape"] = list(self.shape)
        return scalars, {k: getattr(self, k) for k in ARRAYS if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, scalars: dict, arrays: dict[str, np.ndarray]) -> ArrayState:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in scalars.items() if k in known}
        values["shape"] = tuple(int(v) for v in scalars["shape"])
        values["n_in"] = int(scalars["n_in"])
        values["has_bias_row"] = bool(scalars["has_bias_row"])
        values["drift_compensation"] = float(scalars.get("drift_compensation", 1.0))
        values.update({k: np.asarray(arrays[k]) for k in ARRAYS if k in arrays})
        return cls(**values)


def pack(device, settings, state: ArrayState, physics, read, stats: dict) -> dict:
    """A crossbar's state_dict from its parts (see :meth:`xbar.Crossbar.state_dict`)."""
    scalars, arrays = state.to_dict()
    out = {f"state/{k}": v for k, v in arrays.items()}
    out.update({f"persist/{k}": v for k, v in (physics.persist or {}).items() if v is not None})
    out.update({f"adc_fs/{way}": v for way, v in read.adc_fs.items() if v is not None})
    return {"format": FORMAT, "version": VERSION, "device": device.as_dict(), "settings": settings.as_dict(),
            "state": scalars, "stats": dict(stats), "arrays": out,
            "streams": {"read_stream": int(read.stream), "reads": int(read.reads),
                        "program_rng": physics.rng.bit_generator.state}}


def unpack_header(sd: dict, device=None):
    """(device, settings keywords, arrays grouped by part) of a state_dict; checks its format."""
    from ..device import Device
    from ..errors import ConfigError
    if not isinstance(sd, dict) or sd.get("format") != FORMAT:
        got = sd.get("format") if isinstance(sd, dict) else type(sd).__name__
        raise ConfigError(f"not a crossbar state_dict (format {got!r}, expected {FORMAT!r})")
    if sd.get("version", 0) > VERSION:
        raise ConfigError(f"crossbar state_dict version {sd['version']} is newer than this xbar reads ({VERSION})")
    if device is None:
        device = Device.from_dict({k: v for k, v in sd["device"].items() if v is not None})
    settings = dict(sd["settings"])
    settings["tile"] = tuple(settings["tile"])
    settings["w_range"] = tuple(settings["w_range"])
    groups: dict[str, dict[str, np.ndarray]] = {"state": {}, "persist": {}, "adc_fs": {}}
    for k, v in sd["arrays"].items():
        part, _, name = k.partition("/")
        groups.setdefault(part, {})[name] = v
    return device, settings, groups


def rewired(sd: dict, ir_drop: str, r_wire_ohm: float) -> dict:
    """A crossbar's state_dict read through other wires (Crossbar.with_wires): the ADC ranges are
    left out (recalibrated on the first read) and the read noise gets a stream of its own."""
    sd["settings"].update(ir_drop=ir_drop, r_wire_ohm=float(r_wire_ohm))
    sd["arrays"] = {k: v for k, v in sd["arrays"].items() if not k.startswith("adc_fs/")}
    streams = sd["streams"]
    streams["read_stream"] = int(krng.stream_key(np.uint64(streams["read_stream"]),
                                                 np.uint64(2 ** 60 + streams["reads"]))) >> 1
    return sd


def restore(sd: dict, arrays: dict, physics, read, stats: dict) -> ArrayState:
    """The inverse of :func:`pack` on a crossbar's parts: sets the per-device draws, random
    streams, ADC full scales and counters; returns the programmed state."""
    physics.persist = {"gmin": None, "gmax": None, "stuck": None, "nu": None, **arrays["persist"]}
    physics.rng.bit_generator.state = sd["streams"]["program_rng"]
    read.adc_fs = {way: arrays["adc_fs"].get(way) for way in ("fwd", "bwd")}
    read.stream, read.reads = int(sd["streams"]["read_stream"]), int(sd["streams"]["reads"])
    stats.clear()
    stats.update(sd["stats"])
    return ArrayState.from_dict(sd["state"], arrays["state"])


def crossbar_stats(st: ArrayState, settings, read, physics, counters: dict) -> dict:
    """Crossbar.stats(): the activity counters, hardware counts, reads, time and stuck devices."""
    s = dict(counters)
    s.update(hardware_counts(st, settings.tile, read.nrt, read.nct, settings.mapping == "differential"))
    s.update({"reads": read.reads, "t_s": st.t_s, "drift_compensation": st.drift_compensation})
    p = physics.persist or {}
    if p.get("stuck") is not None:
        s["stuck_on"] = int(np.sum(p["stuck"] == 1))
        s["stuck_off"] = int(np.sum(p["stuck"] == -1))
    return s


def hardware_counts(st: ArrayState, tile: tuple[int, int], nrt: int, nct: int, pair: bool) -> dict:
    """Tiles, cells, devices and utilization of a programmed state (pruned cells and empty tiles left out)."""
    P, (rows, out) = st.sig.shape[0], st.shape
    R, C = tile
    allocated = P * nrt * nct
    if st.mask is None:
        cells, tiles = rows * out, allocated
    else:
        cells = int(st.mask.sum())
        pad = np.zeros((nrt * R, nct * C), bool)
        pad[:rows, :out] = st.mask
        tiles = P * int(pad.reshape(nrt, R, nct, C).any(axis=(1, 3)).sum())
    per_cell = 2 if pair else 1
    return {"shape": (st.n_in, out), "rows_used": rows, "tiles": tiles, "tile": (R, C),
            "tiles_allocated": allocated, "pruned_cells": P * (rows * out - cells),
            "planes": P, "cells": P * cells, "devices": P * cells * per_cell,
            "device_capacity": tiles * R * C * per_cell,
            "utilization": cells / max(tiles // P * R * C, 1)}
