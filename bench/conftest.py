"""pytest fixtures and hooks of the mvm benchmarks; the shared pieces live in _benchlib.py."""

from __future__ import annotations

import numpy as np
import pytest
from _benchlib import SHAPES, shape_id, thread_info


@pytest.fixture(scope="session")
def compiled_kernels():
    """Load/compile every numba kernel on tiny arrays once, so no benchmark pays for the JIT.

    Runs both the fused ADC periphery (tile_accumulate) and the no-ADC noise kernel
    (add_scaled_normals), which also starts numba's thread pool.
    """
    from xbar import Crossbar, Device

    rng = np.random.default_rng(0)
    W = rng.uniform(-1, 1, (5, 3)).astype(np.float32)
    X = rng.standard_normal((2, 5)).astype(np.float32)
    noisy = Device.preset("ideal").with_(bits=3, read_noise_rel=0.02)
    Crossbar(noisy, tile=(4, 2), adc_bits=8).program(W).calibrate(X).mvm(X)
    Crossbar(noisy, tile=(4, 2)).program(W).mvm(X)
    # Large enough for the parallel variants (xbar.kernels.PARALLEL_MIN tile outputs).
    W = rng.uniform(-1, 1, (256, 512)).astype(np.float32)
    X = rng.standard_normal((64, 256)).astype(np.float32)
    Crossbar(noisy, tile=(64, 64), adc_bits=8).program(W).calibrate(X).mvm(X)
    Crossbar(noisy, tile=(64, 64)).program(W).mvm(X)
    return True


@pytest.fixture(scope="session")
def threads(compiled_kernels) -> dict:
    """Thread settings of this session, for `benchmark.extra_info`."""
    return thread_info()


@pytest.fixture(scope="session")
def data():
    """shape -> (X (batch, in), W (in, out)), float32, fixed seed.

    W is uniform in the crossbar's default global weight range [-1, 1], so 3-bit devices use all
    their levels; X is standard normal (signed inputs exercise the dynamic DAC scaling).
    """
    cache = {}

    def get(shape):
        if shape not in cache:
            B, n_in, n_out = shape
            rng = np.random.default_rng(1234)
            X = rng.standard_normal((B, n_in), dtype=np.float32)
            W = rng.uniform(-1.0, 1.0, (n_in, n_out)).astype(np.float32)
            cache[shape] = (X, W)
        return cache[shape]

    return get


def pytest_collection_modifyitems(config, items):
    """Run shape by shape (numpy, torch, crossbars, aihwkit of one shape back to back).

    Collection order is function-major; under a load that drifts (other jobs on a 2-core
    machine) the ratios inside one group are more trustworthy when its members run together.
    """
    order = {shape_id(s): i for i, s in enumerate(SHAPES)}

    def key(item):
        callspec = getattr(item, "callspec", None)
        shape = callspec.params.get("shape") if callspec is not None else None
        return order.get(shape_id(shape), len(order)) if shape is not None else len(order)

    items.sort(key=key)   # stable: within a shape the file order stays


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["threads"] = thread_info()


# ---- shared by the training-speed benchmarks (module constants: SAMPLES, TORCH_THREADS, ratio_table)

@pytest.fixture(scope="module")
def fmnist(request):
    """(X, y, perm): Fashion-MNIST training images and the module's first SAMPLES of a fixed shuffle."""
    from xbar import data as xdata
    from xbar.errors import DataError

    try:
        X, y = xdata.load("fmnist", "train")
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST training files are missing: {str(exc).splitlines()[0]}")
    perm = np.random.default_rng(0).permutation(len(X))[:request.module.SAMPLES]
    return X, y, perm


@pytest.fixture(scope="module")
def torch_mod(request):
    """torch with the module's TORCH_THREADS (if set), restored afterwards."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    threads = getattr(request.module, "TORCH_THREADS", None)
    if threads:
        torch.set_num_threads(int(threads))
    yield torch
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def report(request):
    """Collects (min, median) seconds per (pair, impl); prints the module's ratio_table at the end."""
    times: dict[tuple[str, str], tuple[float, float]] = {}
    yield times
    lines = request.module.ratio_table(times)
    plugins = request.config.pluginmanager
    reporter, capman = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if lines and reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():   # shown under -q too, not as captured output
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
