"""Read I–V nonlinearity: relative output error vs v_read, and the cost of the extra products.

    python bench/iv_table.py [--device rram-iv-example]

For a 784x100 layer (weights N(0, 0.3²)) on 64x64 tiles with an 8-bit ADC, inputs U[-1, 1]:
the relative error of the nonlinear read against the same crossbar with an ohmic cell, and the
time of a read with the curve relative to the same read without it (best of 7).
"""

import argparse
import time

import numpy as np

from xbar import Crossbar, Device


def best(f, n=7):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="rram-iv-example")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((784, 100)) * 0.3).astype(np.float32)
    X = rng.uniform(-1, 1, (1000, 784)).astype(np.float32)
    dev = Device.preset(a.device).with_(program_noise=None)
    ohmic = dev.with_(read_iv=None)
    print(f"| v_read (V) | rel. error vs ohmic, {a.device} | read time vs ohmic |")
    print("|---:|---:|---:|")
    for v in (0.05, 0.1, 0.2, 0.3, 0.5):
        nl = Crossbar(dev, adc_bits=8, v_read=v).program(W)
        lin = Crossbar(ohmic, adc_bits=8, v_read=v).program(W)
        y, y0 = nl.mvm(X), lin.mvm(X)
        err = np.linalg.norm(y - y0) / np.linalg.norm(y0)
        ratio = best(lambda nl=nl: nl.mvm(X)) / best(lambda lin=lin: lin.mvm(X))
        print(f"| {v:.2f} | {100 * err:.2f} % | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
