"""The read path of a programmed crossbar: DAC, per-tile currents, read noise, ADC, digital sums.

:class:`ReadPath` holds what a read needs and nothing about how the state was made: the net
conductances per plane ``gd`` (P, rows, out), the read variance (or None), the plane significance
and the digital column gain. Its stages are public so tests and ``bench/profile_read.py`` call
them instead of copying them:

- :meth:`dac` — input scaling and DAC quantization; :meth:`tile_currents` — per-tile mean currents
  and variances (one BLAS product per tile, plus one per nonzero term of a nonlinear I–V curve);
- :meth:`adc_params` — per-tile ADC steps, code bounds and gains (calibrating on first use);
  :meth:`periphery` — the fused kernel over all tiles: read noise, ADC and partial-sum add;
- :meth:`read` — all of the above for inputs already through the DAC.

:meth:`read` itself runs the stages tile by tile (:meth:`_read_by_tile`): each tile's products go
to the kernel right after BLAS, on row blocks that the threads share (:mod:`xbar.tile.rows`). The
first read of a self-calibrating ADC, ADC error models and nonlinear I–V curves take the stages
as listed (the same draws: draw (t·B + b)·N + j of the read's stream for tile t, row b, output j).

Read noise comes from a counter-based stream ``(stream, reads)``: each read advances ``reads``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import pick
from ..kernels import rng as krng
from ..kernels.mvm import dac_dynamic, dac_dynamic_serial, tile_accumulate, tile_accumulate_serial
from . import adc
from .arrays import Patches
from .rows import row_blocks, run_blocks
from .settings import Settings

_NO_VAR = np.zeros((0, 0), dtype=np.float32)
SQUARE_MIN_BYTES = 1 << 20   # a row block's x² above this: the dynamic DAC squares its outputs (dac)


class ReadPath:
    """DAC -> tiles -> ADC -> digital periphery for one crossbar's present conductances."""

    def __init__(self, settings: Settings, window_us: float, stats: dict[str, Any], stream: int):
        self.s = settings
        self.window_us = window_us
        self.stats = stats
        self.stream = int(stream)    # key of the read-noise stream (a drifted copy gets its own)
        self.reads = 0               # counter of the read-noise stream
        self.adc_fs: dict[str, np.ndarray | None] = {"fwd": None, "bwd": None}
        self.cache: dict[str, Any] = {}
        self._squares = None   # (xs, xs²) of the last dynamic DAC, for the read of xs that follows

    def install(self, gd, var: np.ndarray | None, sig: np.ndarray, alpha_eff: np.ndarray,
                nl: tuple[np.ndarray, np.ndarray] | None = None, even: str = "odd",
                shape: tuple[int, int, int] | None = None) -> None:
        """Conductances to read from; the kernel-ready arrays derived from them are built on first use.

        gd: G+ - G- (P, rows, out), or a function that builds it on first use (a lean programming,
        which hands its float32 read arrays to the cache and `shape`, the (P, rows, out) of gd).
        nl: the read nonlinearity's (K2, K3) per device pair in µS (DeviceArray.iv_terms), or None
        for ohmic cells: a tile's current is then x @ G + e(x) @ K2 + x³ @ K3, e(x) = x|x| ("odd")
        or x² ("as-fitted"), on inputs x in [-1, 1] (the DAC's output, V = x v_read).
        """
        self._gd = None if callable(gd) else gd
        self._gd_build = gd if callable(gd) else None
        self.var, self.sig, self.alpha_eff = var, sig, alpha_eff
        self.nl, self.even = nl, even
        self.shape = gd.shape if shape is None else shape
        (_, rows, out), (R, C) = self.shape, self.s.tile
        self.nrt, self.nct, self.cache = -(-rows // R), -(-out // C), {}

    @property
    def gd(self) -> np.ndarray:
        """G+ - G- (P, rows, out) in µS (built on first use after a lean programming)."""
        if self._gd is None:
            self._gd = self._gd_build()
        return self._gd

    @gd.setter
    def gd(self, value: np.ndarray) -> None:
        self._gd = value

    def cached(self, key: str, build):
        value = self.cache.get(key)
        if value is None:
            value = self.cache[key] = build()
        return value

    # ---- derived arrays ------------------------------------------------------------------------
    def gsum(self) -> np.ndarray:
        """sum_p sig_p (G+ - G-): the analog weight before the digital gain, (rows, out)."""
        return self.cached("gsum", lambda: np.einsum("p,pio->io", self.sig, self.gd)
                           if self.shape[0] > 1 else self.gd[0])

    def vsum(self) -> np.ndarray:
        return self.cached("vsum", lambda: np.einsum("p,pio->io", self.sig ** 2, self.var))

    @property
    def w_fwd32(self) -> np.ndarray:
        return self.cached("w_fwd32", lambda: np.ascontiguousarray(
            self.gsum() * self.alpha_eff[None, :], dtype=np.float32))

    @property
    def g32(self) -> np.ndarray:
        return self.cached("g32", lambda: np.ascontiguousarray(self.gsum(), dtype=np.float32))

    @property
    def v_fwd32(self) -> np.ndarray:
        return self.cached("v_fwd32", lambda: np.ascontiguousarray(
            self.vsum() * (self.alpha_eff ** 2)[None, :], dtype=np.float32))

    @property
    def v_bwd32(self) -> np.ndarray:
        return self.cached("v_bwd32", lambda: np.ascontiguousarray(self.vsum().T, dtype=np.float32))

    def nl_weights(self, way: str) -> tuple[np.ndarray, np.ndarray]:
        """The nonlinear terms' (K2, K3) summed over planes like w_fwd32 / g32.T, float32."""
        def one(k):
            ks = np.einsum("p,pio->io", self.sig, k) if k.shape[0] > 1 else k[0]
            return np.ascontiguousarray(ks * self.alpha_eff[None, :] if way == "fwd" else ks.T, dtype=np.float32)
        return self.cached(f"nl-{way}", lambda: tuple(None if k is None else one(k) for k in self.nl))

    def nl_inputs(self, xs: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(e(x), x³) of the DAC's outputs: what the V² and V³ terms of the cells see (None: no term)."""
        k2, k3 = self.nl
        x2 = xs * xs
        even = None if k2 is None else (xs * np.abs(xs) if self.even == "odd" else x2)
        return even, (None if k3 is None else x2 * xs)

    def _stack_fwd(self, a: np.ndarray) -> np.ndarray:
        P, rows, out = a.shape
        R = self.s.tile[0]
        return np.pad(a, ((0, 0), (0, self.nrt * R - rows), (0, 0))).astype(np.float32).reshape(P, self.nrt, R, out)

    def _stack_bwd(self, a: np.ndarray) -> np.ndarray:
        P, rows, out = a.shape
        C = self.s.tile[1]
        a = np.pad(a, ((0, 0), (0, 0), (0, self.nct * C - out))).astype(np.float32)
        return np.ascontiguousarray(a.reshape(P, rows, self.nct, C).transpose(0, 2, 3, 1))

    def var_uniform(self) -> np.ndarray | None:
        """Per plane, the read variance when it is the same for every cell of the plane (additive
        read noise: a constant times the window), as float32 (P,); None when the variance varies
        (or there is no read noise). Then a tile output's variance is that constant times the sum
        of x² over the tile's inputs: no product against a constant matrix is needed."""
        def build():
            v = self.var
            if v is None or v.size == 0:
                return False
            flat = v.reshape(v.shape[0], -1)
            lo, hi = flat.min(axis=1), flat.max(axis=1)
            return lo.astype(np.float32) if np.array_equal(lo, hi) else False
        out = self.cached("var-uniform", build)
        return None if out is False else out

    def _var_stack(self, stack):
        return None if self.var is None or self.var_uniform() is not None else stack(self.var)

    def fwd_stacks(self):
        """Per-tile stacks (P, n_row_tiles, tile_rows, out) of G+ - G- and of the read variance
        (None without read noise, or when it is uniform: see :meth:`var_uniform`)."""
        return self.cached("fwd", lambda: (self._stack_fwd(self._gd32()), self._var_stack(self._stack_fwd)))

    def bwd_stacks(self):
        """Transposed per-tile stacks (P, n_col_tiles, tile_cols, rows) for mvm_t (variance as in fwd_stacks)."""
        return self.cached("bwd", lambda: (self._stack_bwd(self._gd32()), self._var_stack(self._stack_bwd)))

    def _gd32(self) -> np.ndarray:
        """gd for the tile stacks, which hold it as float32: one plane's is g32 (the same values)."""
        return self.g32[None] if self.shape[0] == 1 else self.gd

    def nl_stacks(self, way: str):
        """Per-tile stacks of the nonlinear terms' (K2, K3), laid out like fwd_stacks / bwd_stacks."""
        stack = self._stack_fwd if way == "fwd" else self._stack_bwd
        return self.cached(f"nl-stacks-{way}", lambda: tuple(None if k is None else stack(k) for k in self.nl))

    # ---- stages --------------------------------------------------------------------------------
    def dac(self, X: np.ndarray, on_bad=None):
        """Input scaling and DAC quantization; returns (driven inputs in [-1, 1], scale to undo).
        on_bad: a dynamic range checks X (a matrix or Patches) for NaN/inf in its pass and calls
        on_bad() (which raises) on one. One pass per row (numpy's max over 200,704 x 25 rows: 11 ms)."""
        s = self.s
        if s.dac_range == "dynamic":   # (im2col's rows, Patches, are gathered in this pass)
            (B, n), f32 = X.shape, np.float32
            xs, scale = np.empty((B, n), f32), np.empty((B, 1), f32)
            # a noisy read by tile takes xs²: squared in this pass when a row block's x² would not stay in
            # cache anyway (lenet5's 200,704 x 25 im2col read: 7-8 % faster; 1000 x 784: 3-7 % slower)
            x2 = np.empty((B, n), f32) if (s.dac_bits is None and s.adc_bits is not None and self.var is not None
                                           and self.nl is None and not self._adc_error_model()
                                           and row_blocks(B)[0][1] * n * 4 > SQUARE_MIN_BYTES) else _NO_VAR
            if (X.dac(xs, scale, x2) if isinstance(X, Patches) else
                    pick(dac_dynamic, dac_dynamic_serial, X.size)(X, xs, scale, x2)) and on_bad is not None:
                on_bad()
            self._squares = (xs, x2) if x2.size else None
        else:
            X = X.matrix() if isinstance(X, Patches) else X
            scale = np.float32(s.dac_range)
            xs = X / scale
            n_over = int(np.count_nonzero(np.abs(xs) > 1.0))
            if n_over:
                self.stats["dac_clipped"] += n_over
                xs = np.clip(xs, -1.0, 1.0)
        if s.dac_bits is not None:
            n = np.float32(2 ** (s.dac_bits - 1) - 1)
            xs = np.round(xs * n) / n
            self.stats["dac_conversions"] += xs.size
        return np.ascontiguousarray(xs, dtype=np.float32), scale

    def read(self, xs: np.ndarray, way: str) -> np.ndarray:
        """The analog read plus periphery, on inputs already through the DAC (before gains undo)."""
        squares, self._squares = self._squares, None
        if self.s.adc_bits is None:
            # No ADC: tiles do not change the math, so one BLAS product (and one for the variance).
            g = self.w_fwd32 if way == "fwd" else self.g32.T   # BLAS reads the transpose in place
            y = xs @ g
            if self.nl is not None:
                for x_k, k in zip(self.nl_inputs(xs), self.nl_weights(way)):
                    if k is not None:
                        y += x_k @ k
            if self.var is not None:
                uniform = self.var_uniform()
                if uniform is None:
                    v = self.v_fwd32 if way == "fwd" else self.v_bwd32
                    sd = np.sqrt((xs * xs) @ v)
                else:   # the same variance everywhere: sum of x² times a constant per output
                    c = float(np.dot(self.sig.astype(np.float64) ** 2, uniform))
                    col = (c * self.alpha_eff ** 2 if way == "fwd" else np.full(self.shape[1], c)).astype(np.float32)
                    sd = np.sqrt(np.einsum("bi,bi->b", xs, xs)[:, None] * col[None, :])
                self.reads += 1
                fill = pick(krng.add_scaled_normals, krng.add_scaled_normals_serial, y.size)
                fill(y, sd, np.uint64(self.stream), np.uint64(self.reads))
            return y
        if xs.shape[0] == 0:
            return np.zeros((0, self.shape[2] if way == "fwd" else self.shape[1]), np.float32)
        if self.nl is None and not self._adc_error_model() and self.adc_ready(way, xs.shape[0]):
            return self._read_by_tile(xs, way, squares[1] if squares is not None and squares[0] is xs else None)
        M, V, post = self.tile_currents(xs, way)
        inv_step, step_post, qlo, qhi = self.adc_params(M, post, way)
        errors = self.adc_errors(way, inv_step.shape)
        if errors is not None:
            M, inv_step = adc.apply(M, inv_step, 2 ** (self.s.adc_bits - 1) - 1, errors)
        return self.periphery(M, V, inv_step, step_post, qlo, qhi, post)

    def _adc_error_model(self) -> bool:
        s = self.s
        return bool(s.adc_offset_lsb or s.adc_gain_rel or s.adc_inl_lsb)

    def adc_ready(self, way: str, B: int) -> bool:
        """Whether the ADC constants of `way` are known without looking at this read's currents
        (a calibrated range calibrates on its first read)."""
        if self.s.adc_range != "calibrated":
            return True
        (n_t, n_out, group), fs = (self.nrt, self.shape[2], self.s.tile[1]) if way == "fwd" else \
            (self.nct, self.shape[1], self.s.tile[0]), self.adc_fs[way]
        return fs is not None and fs.shape == (self.shape[0] * n_t, -(-n_out // group))

    def _read_by_tile(self, xs: np.ndarray, way: str, x2_all: np.ndarray | None = None) -> np.ndarray:
        """The read with each tile's products consumed at once (the same operations, tile by tile,
        as tile_currents + periphery; the product buffers stay in cache). x2_all: xs², when the
        DAC squared xs in its pass."""
        B = xs.shape[0]
        g, v, post, size, n_t = self._tile_layout(way)
        n_out, n_in = g.shape[-1], xs.shape[1]
        P = self.shape[0]
        uniform = self.var_uniform()
        inv_step, step_post, qlo, qhi = self.adc_params_for(P * n_t, n_out, post, way)
        # two (B, n_out) buffers reused by every tile (and every read of this batch size)
        bufs = self.cached(f"tile-bufs-{way}-{B}", lambda: (np.empty((B, n_out), np.float32),
                                                             np.empty((B, n_out), np.float32)))
        out = np.empty((B, n_out), np.float32)
        clipped = np.empty(B, np.int64)
        self.reads += 1
        key = np.uint64(krng.stream_key(np.uint64(self.stream), np.uint64(self.reads)))
        kernel = tile_accumulate_serial   # threads split the rows (xbar.tile.rows)

        def rows(r0: int, r1: int) -> None:   # every tile of batch rows r0..r1
            Mb, Vb = bufs[0][r0:r1], bufs[1][r0:r1]
            if v is not None or uniform is not None:   # x² (for additive noise its sum per tile) of these rows
                x2 = xs[r0:r1] * xs[r0:r1] if x2_all is None else x2_all[r0:r1]
                if uniform is not None:
                    x2sum = np.add.reduceat(x2, np.arange(0, n_in, size), axis=1)
            for p in range(P):
                for t in range(n_t):
                    lo, hi = t * size, min((t + 1) * size, n_in)
                    M = np.matmul(xs[r0:r1, lo:hi], g[p, t, :hi - lo], out=Mb)
                    if v is not None:
                        V = np.matmul(x2[:, lo:hi], v[p, t, :hi - lo], out=Vb)
                    elif uniform is not None:
                        V = np.multiply(x2sum[:, t:t + 1], uniform[p])
                    else:
                        V = _NO_VAR
                    k = p * n_t + t
                    kernel(M, V, inv_step[k], step_post[k], qlo[k], qhi[k], post[k], key,
                           (k * B + r0) * n_out, k == 0, out[r0:r1], clipped[r0:r1])

        run_blocks(rows, row_blocks(B))
        self.stats["adc_conversions"] += P * n_t * B * n_out if self.s.adc_bits is not None else 0
        self.stats["adc_clipped"] += int(clipped.sum())
        return out

    def adc_errors(self, way: str, shape: tuple[int, int]):
        """Per-ADC offset, gain and INL draws of this chip (xbar.tile.adc), or None for ideal ADCs."""
        s = self.s
        if not (s.adc_offset_lsb or s.adc_gain_rel or s.adc_inl_lsb):
            return None
        return self.cached(f"adc-errors-{way}-{shape}", lambda: adc.draws(
            s.seed, way, shape, s.adc_offset_lsb, s.adc_gain_rel, s.adc_inl_lsb))

    def periphery(self, M, V, inv_step, step_post, qlo, qhi, post) -> np.ndarray:
        """The fused kernel over all tiles: read noise on each tile output, its ADC, and the
        digital partial sums. M, V: (T, B, N) (V: (T, B, 1) for one variance per row, or None)."""
        T, B, N = M.shape
        out = np.empty((B, N), dtype=np.float32) if T else np.zeros((B, N), dtype=np.float32)
        clipped = np.zeros(B, dtype=np.int64)
        self.reads += 1
        key = np.uint64(krng.stream_key(np.uint64(self.stream), np.uint64(self.reads)))
        kernel = pick(tile_accumulate, tile_accumulate_serial, B * N)
        for t in range(T):
            kernel(M[t], _NO_VAR if V is None else V[t], inv_step[t], step_post[t], qlo[t], qhi[t], post[t], key,
                   t * B * N, t == 0, out, clipped)
        self.stats["adc_conversions"] += M.size
        self.stats["adc_clipped"] += int(clipped.sum())
        return out

    def _tile_layout(self, way: str):
        """(G stacks, variance stacks or None, digital gains post (T, N) float32, tile size, tiles
        per plane) of `way`."""
        R, C = self.s.tile
        P = self.shape[0]
        if way == "fwd":
            n_t, size, (g, v) = self.nrt, R, self.fwd_stacks()
            post = (self.sig[:, None, None] * self.alpha_eff[None, None, :]).repeat(n_t, axis=1)
        else:
            n_t, size, (g, v) = self.nct, C, self.bwd_stacks()
            post = np.broadcast_to(self.sig[:, None, None], (P, n_t, g.shape[-1]))
        post = np.ascontiguousarray(post.reshape(P * n_t, -1), dtype=np.float32)
        return g, v, post, size, n_t

    def tile_currents(self, xs: np.ndarray, way: str):
        """Per-tile mean currents (T, B, N), variances (T, B, N), (T, B, 1) for one variance per
        row (additive noise), or None; and the digital gains post (T, N)."""
        B = xs.shape[0]
        P = self.shape[0]
        g, v, post, size, n_t = self._tile_layout(way)
        # Reused output buffers: fresh ones are page-faulted in again on every read (measured
        # ~2,000 faults and up to 2x the matmul time per call at 256x1024x1024).
        n_out = g.shape[-1]
        uniform = self.var_uniform()
        noisy = v is not None or uniform is not None
        bufs = self.cached(f"bufs-{way}-{B}", lambda: (
            np.empty((P, n_t, B, n_out), np.float32),
            np.empty((P, n_t, B, 1 if uniform is not None else n_out), np.float32) if noisy else None))
        # One product per tile on a column slice of xs (BLAS takes the row stride): no padded,
        # transposed copy of the input, and the last tile multiplies only its real rows. For tall,
        # narrow inputs (a convolution's im2col rows: 200,704 x 25 for lenet5's first layer at
        # batch 256) the padded copy was 2.5x the input and cost more than the products.
        n_in = xs.shape[1]
        x2 = xs * xs if noisy else None
        if uniform is not None:   # per tile and batch row, the sum of x² over the tile's inputs
            x2sum = np.add.reduceat(x2, np.arange(0, n_in, size), axis=1) if n_in else np.zeros((B, n_t), np.float32)
        if self.nl is not None:   # the cells' V² and V³ currents, per tile like the ohmic one
            nl = [(x_k, k) for x_k, k in zip(self.nl_inputs(xs), self.nl_stacks(way)) if k is not None]
            tmp = self.cached(f"nl-buf-{way}-{B}", lambda: np.empty((B, n_out), np.float32))
        def rows(r0: int, r1: int) -> None:   # the row blocks and one BLAS thread of _read_by_tile: same bits
            for p in range(P):
                for t in range(n_t):
                    lo, hi = t * size, min((t + 1) * size, n_in)
                    np.matmul(xs[r0:r1, lo:hi], g[p, t, :hi - lo], out=bufs[0][p, t, r0:r1])
                    if self.nl is not None:
                        for x_k, k in nl:
                            np.matmul(x_k[r0:r1, lo:hi], k[p, t, :hi - lo], out=tmp[r0:r1])
                            bufs[0][p, t, r0:r1] += tmp[r0:r1]
                    if v is not None:
                        np.matmul(x2[r0:r1, lo:hi], v[p, t, :hi - lo], out=bufs[1][p, t, r0:r1])
                    elif uniform is not None:
                        np.multiply(x2sum[r0:r1, t:t + 1], uniform[p], out=bufs[1][p, t, r0:r1])

        run_blocks(rows, row_blocks(B))
        M = bufs[0].reshape(P * n_t, B, -1)
        V = bufs[1].reshape(P * n_t, B, -1) if noisy else None
        return M, V, post

    def _physical_fs(self, way: str) -> float:
        return (self.s.tile[0] if way == "fwd" else self.s.tile[1]) * self.window_us

    def adc_params(self, M: np.ndarray, post: np.ndarray, way: str):
        """ADC step, code bounds and step*gain per (tile, output): full scale per tile (a
        calibrated range calibrates on M, the currents of this read, the first time)."""
        if self.s.adc_bits is None:
            return self.adc_params_for(M.shape[0], M.shape[2], post, way)
        T, _, N = M.shape
        group = self.s.tile[1] if way == "fwd" else self.s.tile[0]
        n_groups = -(-N // group)
        if self.s.adc_range == "calibrated" and (self.adc_fs[way] is None or self.adc_fs[way].shape != (T, n_groups)):
            self.adc_fs[way] = self.calibrated_fs(M, group, n_groups, self._physical_fs(way))
            self.stats[f"adc_auto_calibrated_{way}"] = True
        return self.adc_params_for(T, N, post, way)

    def adc_params_for(self, T: int, N: int, post: np.ndarray, way: str):
        """adc_params for T tiles of N outputs once a calibrated range is known (an ideal ADC:
        inv_step 0, the kernel's flag)."""
        s = self.s
        if s.adc_bits is None:
            z = np.zeros((T, N), np.float32)
            return z, z, z, z
        n = 2 ** (s.adc_bits - 1) - 1
        group = s.tile[1] if way == "fwd" else s.tile[0]   # outputs sharing one tile's ADC
        n_groups = -(-N // group)
        physical = self._physical_fs(way)
        if s.adc_range == "physical":
            fs = np.full((T, n_groups), physical)
        elif s.adc_range == "calibrated":
            fs = self.adc_fs[way]
        else:
            fs = np.full((T, n_groups), float(s.adc_range))
        fs_cols = np.repeat(fs, group, axis=1)[:, :N]
        step = (fs_cols / n).astype(np.float32)
        inv_step = (1.0 / step).astype(np.float32)
        qhi = np.full((T, N), n, dtype=np.float32)
        return inv_step, np.ascontiguousarray(step * post), -qhi, qhi

    def calibrated_fs(self, M: np.ndarray, group: int, n_groups: int, physical: float) -> np.ndarray:
        """Full scale per tile: a percentile of |noise-free current| over a calibration batch."""
        T, B, N = M.shape
        pad = n_groups * group - N
        a = np.abs(np.pad(M, ((0, 0), (0, 0), (0, pad)))).reshape(T, B, n_groups, group)
        a = a.transpose(0, 2, 1, 3).reshape(T, n_groups, -1)
        pct = self.s.adc_percentile
        fs = np.percentile(a, pct, axis=2) if pct < 100 else a.max(axis=2)
        return np.where(fs > 0, fs, physical)

    def calibrate(self, xs: np.ndarray, way: str) -> None:
        """Set the ADC full scale per tile of `way` from DAC'd calibration inputs xs."""
        M, _, _ = self.tile_currents(xs, way)
        group = self.s.tile[1] if way == "fwd" else self.s.tile[0]
        self.adc_fs[way] = self.calibrated_fs(M, group, -(-M.shape[2] // group), self._physical_fs(way))


def summed_column_read(settings: Settings, window_us: float, gd: np.ndarray, var: np.ndarray | None,
                       sig: np.ndarray, stream: int, reads: int, nl=None, even: str = "odd") -> float:
    """Sum of |outputs| of in-memory reads of one-hot inputs (every row alone), before the digital gain.

    What a chip can measure for global drift compensation (aihwkit's GlobalDriftCompensation reads
    the identity the same way): tiles, ADC (its range calibrated on this read) and read noise
    included, from noise stream (stream, reads).
    """
    from collections import defaultdict
    rp = ReadPath(settings, window_us, defaultdict(int), stream)
    rp.reads = reads
    rp.install(gd, var, sig, np.ones(gd.shape[2]), nl=nl, even=even)
    return float(np.abs(rp.read(np.eye(gd.shape[1], dtype=np.float32), "fwd")).sum())
