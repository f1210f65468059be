"""Both cores on one read: threads take blocks of batch rows, each with single-threaded BLAS.

A tile read alternates two thread pools when both are left multi-threaded: OpenBLAS's for each
tile's products and numba's for the noise + ADC kernel, with a hand-over per tile (26 per read of
a 784x100 layer on 64x64 tiles). Splitting the batch rows instead lets each thread run the whole
tile loop on its rows: one-thread BLAS calls and the serial kernel, no hand-over.

Same bits at any thread count: the blocks depend on the batch size only (max(128, ceil(B/4)) rows,
at most four, the last may be shorter), every block's products run on one BLAS thread, and every draw belongs to
(read, tile, global row, output). (OpenBLAS gives a row different bits in calls of different
heights, so the blocks must not follow the thread count.) The pool has numba's thread count
(``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``). Reads from several Python threads at once
take turns (one lock), and a forked child starts a pool of its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_blas = None
MIN_ROWS = 128
MAX_BLOCKS = 4


def _after_fork() -> None:
    """A forked child has none of the parent's pool threads: start afresh (a copied pool would
    wait forever for workers that do not exist, and a copied lock may be held)."""
    global _lock, _pool, _pool_size
    _lock = threading.Lock()
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def row_blocks(B: int) -> list[tuple[int, int]]:
    """The row blocks of a read of B rows, whatever the thread count: blocks of max(MIN_ROWS,
    ceil(B / MAX_BLOCKS)) rows, the last one shorter where B does not divide (one block for at
    most MIN_ROWS rows)."""
    size = max(MIN_ROWS, -(-B // MAX_BLOCKS))
    return [(r, min(B, r + size)) for r in range(0, B, size)] or [(0, 0)]


def _blas_libs():
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        except Exception:   # noqa: BLE001 - no controllable BLAS: calls run with what they have
            _blas = []
    return _blas


@contextlib.contextmanager
def one_blas_thread():
    """BLAS limited to one thread inside the block (restored after)."""
    libs = _blas_libs()
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


def run_blocks(work, blocks: list[tuple[int, int]]) -> None:
    """work(r0, r1) for every block with single-threaded BLAS: on the caller's thread with one
    numba thread (or one block, or no BLAS threadpoolctl can limit), else spread over a pool of
    numba's thread count. Every block finishes before the first error is re-raised."""
    global _pool, _pool_size
    n = min(numba.get_num_threads(), len(blocks))
    with _lock, one_blas_thread():
        if n <= 1 or not _blas_libs():
            for r0, r1 in blocks:
                work(r0, r1)
            return
        if _pool is None or _pool_size < n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="xbar-rows")
            _pool_size = n
        futures = [_pool.submit(work, r0, r1) for r0, r1 in blocks]
        wait(futures)
        for f in futures:
            f.result()
