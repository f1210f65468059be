"""The devices of one crossbar: per-device draws, writes, pulses, drift and read variance.

A :class:`DeviceArray` owns the device's model objects (:mod:`xbar.physics`), the programming
random generator and the per-device properties drawn once per crossbar (window spread, stuck
faults and, for the constant drift model, the drift exponents). It works on conductance arrays of
shape (P, rows, out) per device of a pair (k = 0 for G+ or the offset device, k = 1 for G-) and
never sees weights, tiles or the periphery.
"""

from __future__ import annotations

import numpy as np

from ..device import Device, pulse_curve_a, pulse_number, pulse_response
from ..errors import ConfigError, ShapeError
from .arrays import as_matrix


class DeviceArray:
    """Physics of every device of one crossbar, seeded once: same seed, same draws."""

    def __init__(self, device: Device, pair: bool, seed: int):
        self.device = device
        self.n_dev = 2 if pair else 1
        self.program_noise, self.read_noise, self.drift_model, self.read_iv = device.models()
        self.rng = np.random.default_rng(seed)
        self.persist: dict[str, np.ndarray | None] | None = None
        d = device
        # A write that lands exactly on its targets (no spread, write noise or faults).
        self.exact_write = not (d.g_d2d_rel or d.stuck_on_rate or d.stuck_off_rate
                                or is_active(self.program_noise))

    # ---- per-device draws ----------------------------------------------------------------------
    def persistent(self, shape) -> dict[str, np.ndarray | None]:
        """Per-device properties drawn once per crossbar: window spread, faults, constant drift ν.

        The draw order (g_min, g_max, faults, ν) is part of the seeded results; keep it.
        """
        if self.persist is None:
            d, r = self.device, self.rng
            full = (self.n_dev,) + tuple(shape)
            p: dict[str, np.ndarray | None] = {}
            p["gmin"] = d.g_min_us * (1 + d.g_d2d_rel * r.standard_normal(full)) if d.g_d2d_rel else None
            p["gmax"] = d.g_max_us * (1 + d.g_d2d_rel * r.standard_normal(full)) if d.g_d2d_rel else None
            if p["gmin"] is not None:
                p["gmin"] = np.maximum(p["gmin"], 0.0)
                p["gmax"] = np.maximum(p["gmax"], p["gmin"])
            if d.stuck_on_rate or d.stuck_off_rate:
                u = r.random(full)
                p["stuck"] = np.where(u < d.stuck_on_rate, 1, np.where(u < d.stuck_on_rate + d.stuck_off_rate,
                                                                        -1, 0)).astype(np.int8)
            else:
                p["stuck"] = None
            dm = self.drift_model
            p["nu"] = None if dm.state_dependent else dm.draw_nu(np.zeros(full), r)
            self.persist = p
        return self.persist

    def window(self, k: int):
        """(lo, hi) of device k of each pair: arrays under spread, else the device's scalars."""
        p = self.persist or {}
        if p.get("gmin") is not None:
            return p["gmin"][k], p["gmax"][k]
        return self.device.g_min_us, self.device.g_max_us

    # ---- writing -------------------------------------------------------------------------------
    def write(self, g: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
        """Target conductances (P, rows, out) of device k -> what the devices hold after one write.

        Spread maps the target into each device's own window, the programming-noise model adds its
        error, cells outside `mask` (pruned) are not written and stay at their own g_min, and stuck
        devices hold g_max (stuck on) or g_min (stuck off).
        """
        d = self.device
        p = self.persistent(g.shape)
        if p["gmin"] is not None:
            lo, hi = p["gmin"][k], p["gmax"][k]
            g = lo + (g - d.g_min_us) * (hi - lo) / d.window_us
        else:
            lo, hi = d.g_min_us, d.g_max_us
        if is_active(self.program_noise):
            g = self.program_noise.write(g, lo, hi, d.window_us, self.rng)
        if mask is not None:
            g = np.where(mask[None], g, lo)
        return self.stuck(g, k)

    def stuck(self, g: np.ndarray, k: int) -> np.ndarray:
        """Stuck devices override whatever was written."""
        s = (self.persist or {}).get("stuck")
        if s is None:
            return g
        lo, hi = self.window(k)
        return np.where(s[k] == 1, hi, np.where(s[k] == -1, lo, g))

    def draw_nu(self, targets: list[np.ndarray]) -> np.ndarray | None:
        """Drift exponents (n_dev, P, rows, out) for this programming (state-dependent models only)."""
        dm = self.drift_model
        if not dm.state_dependent:
            return None
        nus = [dm.draw_nu(t, self.rng) for t in targets]
        return None if nus[0] is None else np.stack(nus)

    def pulse_pair(self, g0: list[np.ndarray], n_pos, n_neg, shape: tuple[int, int], stats: dict) -> list:
        """Validated signed pulse counts on each device of the pairs: the new (P, rows, out) arrays.

        g0: the as-programmed conductances of G+ (and G-), (P, rows, out) each (P planes: replicas);
        n_pos / n_neg: counts (rows, out) when P = 1, else (P, rows, out); n_neg None means no
        pulses on G-. Counts every pulse in stats["pulses"].
        """
        planes = g0[0].shape[0]
        full = (planes,) + tuple(shape)

        def counts_of(name, n):
            n = np.asarray(n)
            if n.ndim == 3:
                if n.shape != full:
                    raise ShapeError(f"{name}: expected pulse counts of shape {full}, got {n.shape}")
                return np.stack([as_matrix(name, c, cols=shape[1]) for c in n])
            if planes != 1:
                raise ShapeError(f"{name}: this crossbar has {planes} replicas: expected pulse counts of "
                                 f"shape {full}, got {n.shape}")
            c = as_matrix(name, n, cols=shape[1])
            if c.shape[0] != shape[0]:
                raise ShapeError(f"pulse counts: expected shape {tuple(shape)}, got {c.shape}")
            return c[None]

        counts = [counts_of("n_pos", n_pos)]
        if len(g0) > 1:
            counts.append(np.zeros_like(counts[0]) if n_neg is None else counts_of("n_neg", n_neg))
        new = []
        for k, (g, n) in enumerate(zip(g0, counts)):
            new.append(self.pulse(g, n, k))
            stats["pulses"] = stats.get("pulses", 0) + int(np.abs(n).sum())
        return new

    def pulse(self, g: np.ndarray, n: np.ndarray, k: int) -> np.ndarray:
        """Signed pulse counts n (P, rows, out) on device k of every plane holding g (P, rows, out):
        the NeuroSim response.

        > 0 potentiates along the LTP curve, < 0 depresses along the LTD curve (its mirror image
        from g_max), each with A = P_max / |nonlinearity|; every pulse train adds cycle-to-cycle
        noise N(0, c2c_rel * window * sqrt(|n|)). Stuck devices ignore pulses.
        """
        d = self.device
        if d.pulse_levels is None:
            raise ConfigError(f"device {d.name!r} has no pulse_levels: pulse updates need the "
                              "pulse response (pulse_levels, nonlinearity_ltp/ltd, c2c_rel)")
        p = self.persistent(g.shape)   # drawn at the first programming
        g = g.copy()
        if p["gmin"] is not None:
            lo, hi = p["gmin"][k], p["gmax"][k]
        else:
            lo, hi = np.full_like(g, d.g_min_us), np.full_like(g, d.g_max_us)
        n = n.astype(np.float64)
        up, down = n > 0, n < 0
        a_ltp = pulse_curve_a(d.nonlinearity_ltp, d.pulse_levels)
        a_ltd = pulse_curve_a(d.nonlinearity_ltd, d.pulse_levels)
        if np.any(up):
            pn = pulse_number(g[up], a_ltp, d.pulse_levels, lo[up], hi[up])
            g[up] = pulse_response(np.minimum(pn + n[up], d.pulse_levels - 1), a_ltp, d.pulse_levels,
                                   lo[up], hi[up])
        if np.any(down):
            mirror = lo[down] + hi[down] - g[down]
            pn = pulse_number(mirror, a_ltd, d.pulse_levels, lo[down], hi[down])
            g[down] = lo[down] + hi[down] - pulse_response(np.minimum(pn - n[down], d.pulse_levels - 1),
                                                           a_ltd, d.pulse_levels, lo[down], hi[down])
        if d.c2c_rel:
            moved = n != 0
            g[moved] += d.c2c_rel * d.window_us * np.sqrt(np.abs(n[moved])) * \
                self.rng.standard_normal(int(moved.sum()))
        g = np.clip(g, lo, hi)
        if p["stuck"] is not None:
            s = p["stuck"][k]
            g = np.where(s == 1, hi, np.where(s == -1, lo, g))
        return g

    # ---- time and reading ----------------------------------------------------------------------
    def drifted(self, g0: np.ndarray, k: int, t_s: float, nu: np.ndarray | None) -> np.ndarray:
        """Conductances of device k t_s seconds after programming (nu: state-dependent exponents)."""
        if nu is None:
            nu = (self.persist or {}).get("nu")
        if nu is None:
            return g0
        return self.drift_model.apply(g0, nu[k], t_s)

    def read_variance(self, g: list[np.ndarray], g0: list[np.ndarray], t_s: float | None,
                      enabled: bool = True) -> np.ndarray | None:
        """Variance of one read summed over each pair (P, rows, out) in µS², or None without read noise."""
        rn = self.read_noise
        if not enabled or not is_active(rn):
            return None
        w = self.device.window_us
        var = None
        for gk, g0k in zip(g, g0):
            v = rn.variance(gk, t_s, w, g_prog=g0k)
            var = v if var is None else var + v
        return np.broadcast_to(var, g[0].shape).copy() if np.ndim(var) < g[0].ndim else var


    def iv_terms(self, g: list[np.ndarray], v_read: float, pair: bool):
        """Per-device read-nonlinearity weights (K2, K3) in µS, (P, rows, out), or None when ohmic.

        A term the model does not have (all its coefficients zero) is None.

        With inputs x in [-1, 1] applied as V = x v_read, a cell's current divided by v_read is
        G x + K2 e(x) + K3 x³ with K2 = NL2(G) v_read, K3 = NL3(G) v_read² and e(x) = x|x| (odd
        cell) or x² (as fitted); a differential pair reads the difference of its two devices.
        Only the physical devices count: the offset mapping's reference column is digital.
        """
        iv = self.read_iv
        if iv.linear:
            return None
        k2, k3 = iv.coefficients(g[0])
        if pair:
            n2, n3 = iv.coefficients(g[1])
            k2, k3 = k2 - n2, k3 - n3
        # A term whose coefficients are all zero costs no product (None).
        return (k2 * v_read if iv.has_even else None), (k3 * v_read ** 2 if iv.has_cubic else None)


def is_active(model) -> bool:
    """False for a constant model whose magnitude is zero (it would change nothing)."""
    return not (model.name == "constant" and not getattr(model, "rel", 1.0))
