"""A programmed crossbar some time later: drifted conductances and global drift compensation."""

from __future__ import annotations

import copy
import math

import numpy as np

from ..errors import ConfigError
from ..kernels import rng as krng
from .read import summed_column_read


def check_drift_args(seconds, compensate) -> float:
    """Crossbar.at's arguments checked (one ConfigError line each); returns seconds as a float."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds <= 0:
        raise ConfigError(f"seconds = {seconds!r}: expected a finite time > 0 after programming")
    if compensate not in (False, True, "exact", "read"):
        raise ConfigError(f"compensate = {compensate!r}: expected False, True ('exact') or 'read'")
    return float(seconds)


def drifted_copy(xb, seconds: float, compensate: bool | str):
    """A shallow copy of Crossbar `xb` whose devices have drifted for `seconds` (not installed yet).

    The copy shares the per-device draws, reads (and would reprogram) with random streams of its
    own, and carries the global drift compensation factor (see ``Crossbar.at``) in its state.
    """
    st, ph = xb.state, xb.physics
    new = copy.copy(xb)
    new._stats = dict(xb._stats)
    new.read = copy.copy(xb.read)
    new.read.stats = new._stats
    new.read.adc_fs = dict(xb.read.adc_fs)
    pair = xb.mapping == "differential"
    gp = ph.drifted(st.gp0, 0, seconds, st.nu)
    gn = ph.drifted(st.gn0, 1, seconds, st.nu) if pair else st.gn0
    # The copy reads (and reprograms) with its own random streams, independent of the original.
    new.read.stream = int(krng.stream_key(np.uint64(xb.read.stream), np.uint64(2 ** 62 + xb.read.reads))) >> 1
    new.physics = copy.copy(ph)
    new.physics.rng = np.random.default_rng([xb.seed, xb.read.reads, 1])
    new.state = copy.copy(st)
    new.state.gp, new.state.gn = gp, gn
    new.state.t_s = seconds
    new.state.drift_compensation = 1.0
    new._alpha_src = None
    if compensate:
        new.state.drift_compensation = compensation(xb, gp, gn, seconds, compensate, new.read.stream)
    return new


def compensation(xb, gp, gn, seconds: float, how: bool | str, stream: int) -> float:
    """The digital factor restoring the summed |column current| of one-hot inputs (before / after).

    how "read": measured by noisy in-memory reads, as a chip can (noise stream derived from
    `stream`); True / "exact": from the noise-free conductances.
    """
    st, ph = xb.state, xb.physics
    pair = xb.mapping == "differential"
    if how == "read":   # noisy one-hot reads before and after, as a chip can
        g0, g1 = [st.gp0, st.gn0][:1 + pair], [gp, gn][:1 + pair]
        var0 = ph.read_variance(g0, g0, None, enabled=xb.settings.read_noise)
        var1 = ph.read_variance(g1, g0, seconds, enabled=xb.settings.read_noise)
        cal = int(krng.stream_key(np.uint64(stream), np.uint64(2 ** 61))) >> 1
        v_read, even = xb.settings.v_read, ph.read_iv.even_term
        window = xb.device.window_us
        before = summed_column_read(xb.settings, window, st.gp0 - st.gn0, var0, st.sig, cal, 1,
                                    ph.iv_terms(g0, v_read, pair), even)
        after = summed_column_read(xb.settings, window, gp - gn, var1, st.sig, cal, 2,
                                   ph.iv_terms(g1, v_read, pair), even)
    else:
        before = np.abs(np.einsum("p,pio->o", st.sig, st.gp0 - st.gn0)).sum()
        after = np.abs(np.einsum("p,pio->o", st.sig, gp - gn)).sum()
    return float(before / after) if after > 0 else 1.0
