"""im2col / col2im and 2-d pooling on channels-last maps: the kernels behind xbar.conv.

Feature maps are (batch, H, W, C) float32, C-contiguous (channels last). A convolution becomes one
matrix product on the crossbar: im2col gathers, for every output position (b, oh, ow), the
kh×kw×C input patch into one row, in (i, j, c) order (kernel row, kernel column, channel), so a
row is kh runs of kw·C contiguous input values. col2im is its adjoint (patch gradients added back
onto the input positions they came from); zero padding is read as zeros and dropped on the way
back.

Every kernel has a serial twin; the parallel one splits the batch, so each thread writes only its
own images' rows (im2col, pooling) or its own images (col2im, pooling backward). Plain numpy
references live in xbar.conv (``*_reference``) and the tests compare the two.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import njit, njit_inline, njit_parallel, serial_twin
from .mvm import dac_dynamic_serial


def _im2col(x, kh, kw, stride, pad, oh, ow, cols):
    """x (B, H, W, C) -> cols (B*oh*ow, kh*kw*C), overwritten; padded positions get 0.

    Inside the input a patch row (kernel row i) is kw*C contiguous values of x, copied as one
    run through slice views (indexing the 2-d arrays element by element kept the copy from
    vectorizing: 1.5-2.7x slower); only patches that overlap the padding go value by value. Runs of
    4 to 15 values (a first convolution's few channels) come from the image padded once into a
    buffer, each patch row by fixed-width copies (:func:`_runs_fixed`: 7.9 -> 3.6 ms for 256 28x28
    images, 5x5, padding 2, one thread). Shorter runs go column by column from the input row,
    padded once into a buffer.
    """
    B, H, W, C = x.shape
    x3 = x.reshape(B, H, W * C)
    kwc = kw * C
    sc = stride * C
    if 4 <= kwc < 16 and kh >= 2:
        wp = (W + 2 * pad) * C
        for b in prange(B):
            img = np.zeros((H + 2 * pad) * wp + 16, np.float32)   # 16: a last copy's overrun
            for h in range(H):
                o = (h + pad) * wp + pad * C
                img[o:o + W * C] = x3[b, h]
            for p in range(oh):
                for q in range(ow):
                    _runs_fixed(img, p * stride * wp + q * sc, wp, kh, kwc, cols[(b * oh + p) * ow + q])
        return
    for b in prange(B):
        row = np.zeros((W + 2 * pad) * C, np.float32)
        for p in range(oh):
            r0 = (b * oh + p) * ow
            for i in range(kh):
                h = p * stride - pad + i
                base = i * kwc
                if h < 0 or h >= H:
                    for q in range(ow):
                        d = cols[r0 + q, base:base + kwc]
                        for t in range(kwc):
                            d[t] = 0.0
                    continue
                src = x3[b, h]
                if kwc < 16:
                    for t in range(W * C):
                        row[pad * C + t] = src[t]
                    for t in range(kwc):
                        for q in range(ow):
                            cols[r0 + q, base + t] = row[q * sc + t]
                    continue
                for q in range(ow):
                    w0 = q * stride - pad
                    d = cols[r0 + q, base:base + kwc]
                    if w0 >= 0 and w0 + kw <= W:
                        run = src[w0 * C:w0 * C + kwc]
                        for t in range(kwc):
                            d[t] = run[t]
                    else:
                        for j in range(kw):
                            w = w0 + j
                            if w < 0 or w >= W:
                                for c in range(C):
                                    d[j * C + c] = 0.0
                            else:
                                for c in range(C):
                                    d[j * C + c] = src[w * C + c]


@njit_inline
def _runs_fixed(img, s0, wp, kh, kwc, d):
    """One patch row d (kh*kwc) from the padded image img (row length wp; the patch's first value
    at s0), for 4 <= kwc < 16: kernel rows 0..kh-2 as 8- (kwc <= 8) or 16-value copies, whose
    overrun past the run lands on the next run, copied after it (8 or 16 <= 2 kwc keeps it inside
    d), and the last row exactly. A fixed-width copy compiles to vector loads and stores; a loop
    over kwc values did not vectorize."""
    for i in range(kh - 1):
        s, o = s0 + i * wp, i * kwc
        _copy8(img[s:s + 8], d[o:o + 8])
        if kwc > 8:
            _copy8(img[s + 8:s + 16], d[o + 8:o + 16])
    s, o = s0 + (kh - 1) * wp, (kh - 1) * kwc
    run, out = img[s:s + kwc], d[o:o + kwc]
    for t in range(kwc):
        out[t] = run[t]


@njit_inline
def _copy8(src, dst):
    """dst[:8] = src[:8] as eight loads, then eight stores: constant indices, so the compiler
    merges them into one vector copy whatever the arrays' aliasing (both have >= 8 values)."""
    v0, v1, v2, v3, v4, v5, v6, v7 = src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7]
    dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], dst[6], dst[7] = v0, v1, v2, v3, v4, v5, v6, v7


def _col2im(cols, kh, kw, stride, pad, oh, ow, dx):
    """cols (B*oh*ow, kh*kw*C) -> dx (B, H, W, C), overwritten: the adjoint of _im2col."""
    B, H, W, C = dx.shape
    d3 = dx.reshape(B, H, W * C)
    kwc = kw * C
    for b in prange(B):
        dx[b] = 0.0
        for p in range(oh):
            r0 = (b * oh + p) * ow
            for i in range(kh):
                h = p * stride - pad + i
                if h < 0 or h >= H:
                    continue
                base = i * kwc
                for q in range(ow):
                    w0 = q * stride - pad
                    r = r0 + q
                    if w0 >= 0 and w0 + kw <= W:
                        s0 = w0 * C
                        for t in range(kwc):
                            d3[b, h, s0 + t] += cols[r, base + t]
                    else:
                        for j in range(kw):
                            w = w0 + j
                            if w >= 0 and w < W:
                                for c in range(C):
                                    d3[b, h, w * C + c] += cols[r, base + j * C + c]


def _maxpool(x, size, stride, oh, ow, out, arg):
    """Max over size×size windows: out (B, oh, ow, C) and arg, the flat h*W + w of each maximum
    (the first one in window order on ties, as torch does; NaN wins, so it is never hidden)."""
    B, W, C = x.shape[0], x.shape[2], x.shape[3]
    for b in prange(B):
        for p in range(oh):
            for q in range(ow):
                h0 = p * stride
                w0 = q * stride
                for c in range(C):
                    out[b, p, q, c] = x[b, h0, w0, c]
                    arg[b, p, q, c] = h0 * W + w0
                for i in range(size):
                    for j in range(size):
                        if i == 0 and j == 0:
                            continue
                        where = (h0 + i) * W + w0 + j
                        for c in range(C):
                            v = x[b, h0 + i, w0 + j, c]
                            best = out[b, p, q, c]
                            if v > best or (math.isnan(v) and not math.isnan(best)):
                                out[b, p, q, c] = v
                                arg[b, p, q, c] = where


def _maxpool_back(g, arg, dx):
    """Route g (B, oh, ow, C) to the maxima: dx (B, H, W, C), overwritten."""
    B, oh, ow, C = g.shape
    W = dx.shape[2]
    for b in prange(B):
        dx[b] = 0.0
        for p in range(oh):
            for q in range(ow):
                for c in range(C):
                    a = arg[b, p, q, c]
                    dx[b, a // W, a % W, c] += g[b, p, q, c]


def _avgpool(x, size, stride, oh, ow, out):
    """Mean over size×size windows: out (B, oh, ow, C)."""
    B, C = x.shape[0], x.shape[3]
    inv = np.float32(1.0 / (size * size))
    for b in prange(B):
        for p in range(oh):
            for q in range(ow):
                for c in range(C):
                    out[b, p, q, c] = 0.0
                for i in range(size):
                    for j in range(size):
                        for c in range(C):
                            out[b, p, q, c] += x[b, p * stride + i, q * stride + j, c]
                for c in range(C):
                    out[b, p, q, c] *= inv


def _avgpool_back(g, size, stride, dx):
    """Spread g (B, oh, ow, C) evenly over each window: dx (B, H, W, C), overwritten."""
    B, oh, ow, C = g.shape
    inv = np.float32(1.0 / (size * size))
    for b in prange(B):
        dx[b] = 0.0
        for p in range(oh):
            for q in range(ow):
                for i in range(size):
                    for j in range(size):
                        for c in range(C):
                            dx[b, p * stride + i, q * stride + j, c] += g[b, p, q, c] * inv


im2col_kernel = njit_parallel(_im2col)
im2col_kernel_serial = njit(serial_twin(_im2col))


def _im2col_dac(x, kh, kw, stride, pad, oh, ow, xs, scale, x2):
    """im2col's rows through the dynamic DAC without the im2col matrix: image by image, its rows
    gathered into a buffer that stays in cache and scaled from there into xs (with the squares in
    x2 unless it is size 0), by the serial im2col and DAC kernels: the bits of im2col and then
    xbar.kernels.mvm.dac_dynamic. Threads split the images. Returns the number of rows holding a
    NaN or inf. (lenet5's convolutions at batch 256, with squares: 6.9 -> 5.8 and 6.0 -> 3.7 ms on
    two threads, 8.9 -> 7.5 and 8.3 -> 6.1 ms on one.)"""
    n = oh * ow
    bad = 0
    for b in prange(x.shape[0]):
        own = np.empty((n, xs.shape[1]), np.float32)
        im2col_kernel_serial(x[b:b + 1], kh, kw, stride, pad, oh, ow, own)
        r0, r1 = b * n, (b + 1) * n
        bad += dac_dynamic_serial(own, xs[r0:r1], scale[r0:r1], x2[r0:r1] if x2.size > 0 else x2)
    return bad


im2col_dac_kernel = njit_parallel(_im2col_dac)
im2col_dac_kernel_serial = njit(serial_twin(_im2col_dac))
col2im_kernel = njit_parallel(_col2im)
col2im_kernel_serial = njit(serial_twin(_col2im))
maxpool_kernel = njit_parallel(_maxpool)
maxpool_kernel_serial = njit(serial_twin(_maxpool))
maxpool_back_kernel = njit_parallel(_maxpool_back)
maxpool_back_kernel_serial = njit(serial_twin(_maxpool_back))
avgpool_kernel = njit_parallel(_avgpool)
avgpool_kernel_serial = njit(serial_twin(_avgpool))
avgpool_back_kernel = njit_parallel(_avgpool_back)
avgpool_back_kernel_serial = njit(serial_twin(_avgpool_back))
