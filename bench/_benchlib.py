"""Shared pieces of the mvm benchmarks: shapes, crossbar configs, thread settings.

Imported by conftest.py, test_mvm.py, profile_read.py and the training benchmarks (bench/ is on sys.path under pytest).

The thread settings are part of every result: on a small machine numba's parallel kernels,
OpenBLAS and torch's OpenMP pool each start one thread per core, and threads that spin-wait
after one library's call slow down the next library's call. Every benchmark therefore records
the numba threading layer and thread count, torch's thread count and numpy's BLAS in its
`extra_info`, and the same dictionary goes into the JSON's `machine_info["threads"]`.
"""

from __future__ import annotations

import os
import sys

import numpy as np

# (batch, in, out): an MNIST-sized layer at a small and a large batch, and a square 1k layer.
# XBAR_BENCH_SHAPES="256x512x512,256x1024x1024" replaces the shapes (batch x in x out), e.g. for
# the square layers of the aihwkit comparison.
SHAPES = ([tuple(int(v) for v in s.split("x")) for s in os.environ["XBAR_BENCH_SHAPES"].split(",")]
          if os.environ.get("XBAR_BENCH_SHAPES") else [(64, 784, 100), (1000, 784, 100), (256, 1024, 1024)])

# Environment variables that change how the libraries thread; recorded so a result can be rerun.
THREAD_ENV = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
              "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND",
              "OPENBLAS_THREAD_TIMEOUT", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator() -> bool:
    """glibc's allocator tuned as the CLI and sweep workers do (xbar._runtime.tune_allocator), where
    present; True when applied. The training benchmarks call it for torch and xbar alike."""
    try:
        from xbar._runtime import tune_allocator as tune
    except ImportError:
        return False
    return tune()


def time_calls(obj, name: str, key: str, acc: dict[str, float]) -> None:
    """Wrap method `name` of the instance `obj` so that its wall time adds up in acc[key]."""
    import time
    fn = getattr(obj, name)

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0
    setattr(obj, name, timed)


def shape_id(shape) -> str:
    return "x".join(str(s) for s in shape)


def crossbar_configs():
    """name -> (Device, Crossbar keywords): the configurations of the benchmark."""
    from xbar import Device

    ideal = Device.preset("ideal")
    noisy = ideal.with_(bits=3, read_noise_rel=0.02, read_noise_kind="multiplicative")
    additive = ideal.with_(bits=3, read_noise_rel=0.02, read_noise_kind="additive")
    return {
        # Analog device, analog inputs, no ADC: the fast path is one BLAS product.
        "xbar-ideal": (ideal, {"adc_bits": None, "dac_bits": None}),
        # 3-bit devices with 2 % multiplicative read noise, 8-bit ADC per tile output.
        "xbar-3bit-adc8-t64": (noisy, {"mapping": "differential", "adc_bits": 8, "tile": (64, 64)}),
        "xbar-3bit-adc8-t256": (noisy, {"mapping": "differential", "adc_bits": 8, "tile": (256, 256)}),
        # The same with additive read noise (2 % of the window, the same for every cell).
        "xbar-3bit-add-adc8-t64": (additive, {"mapping": "differential", "adc_bits": 8, "tile": (64, 64)}),
        "xbar-3bit-add-adc8-t256": (additive, {"mapping": "differential", "adc_bits": 8, "tile": (256, 256)}),
    }


def blas_info() -> list[dict] | dict:
    """numpy's BLAS: the loaded libraries and their thread counts (threadpoolctl), else the build info."""
    try:
        import threadpoolctl
    except ImportError:
        try:
            return np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        except Exception as exc:   # noqa: BLE001 - informational only
            return {"error": repr(exc)}
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer",
            "architecture", "filepath")
    return [{k: d.get(k) for k in keep} for d in threadpoolctl.threadpool_info()]


def _periphery_cache_shared() -> bool | None:
    """True when the parallel and serial periphery kernels share one numba cache index.

    numba keys its on-disk cache by the Python function (qualname + line), not by the jit
    options, so `njit(f)` and `njit(parallel=True)(f)` of the same `f` load each other's machine
    code: whichever compiled first wins, and the "parallel" kernel can silently run serially.
    """
    try:
        from xbar.kernels import mvm

        par, ser = mvm.tile_accumulate, mvm.tile_accumulate_serial
        return par._cache._cache_file._index_path == ser._cache._cache_file._index_path
    except Exception:   # noqa: BLE001 - private numba API, or no serial variant: unknown
        return None


def thread_info() -> dict:
    """The thread settings in force now (call after a numba parallel kernel has run)."""
    import numba

    info: dict = {"cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    info["env"] = {k: os.environ.get(k) for k in THREAD_ENV}
    info["numba_version"] = numba.__version__
    info["numba_threading_layer_requested"] = numba.config.THREADING_LAYER
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:       # no parallel region has run yet
        info["numba_threading_layer"] = None
    info["numba_num_threads"] = numba.get_num_threads()
    info["periphery_cache_shared"] = _periphery_cache_shared()
    info["numba_max_threads"] = numba.config.NUMBA_NUM_THREADS
    try:
        import torch

        info["torch_version"] = torch.__version__
        info["torch_num_threads"] = torch.get_num_threads()
        info["torch_num_interop_threads"] = torch.get_num_interop_threads()
    except ImportError:
        info["torch_num_threads"] = None
    info["numpy_version"] = np.__version__
    info["numpy_blas"] = blas_info()
    return info


def require_aihwkit():
    """torch, with aihwkit importable beside it; else say how to build them and exit 0 (a skip)."""
    try:
        import aihwkit  # noqa: F401
        import torch
    except ImportError as exc:
        print(f"aihwkit is not importable here ({exc}); skipping. Build it with "
              "../shared/tools/install-peers.sh and run this script with that venv's python.")
        sys.exit(0)
    return torch
