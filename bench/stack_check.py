"""Runs of a stacked sweep, trained again alone: are their stored histories the same, bit for bit?

    python bench/stack_check.py results/seed-study.h5 [N] [--only KEY=VALUE ...]

Picks N stored runs (default 4: ok and diverged ones, from different groups, the smallest
networks first so that the check takes minutes), trains each alone with ``xbar.train.train`` on
its stored config and compares every per-epoch history field the store keeps (test accuracy,
test loss, step loss, step accuracy, lr, layer weight and conductance ranges) and the status and
message. Prints one line per run and exits 1 if any differs.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(argv: list[str]) -> int:
    from xbar import store
    from xbar.sweep.worker import layer_probe
    from xbar.train import train
    path = argv[0]
    n = int(argv[1]) if len(argv) > 1 and not argv[1].startswith("--") else 4
    only = [argv[i + 1].split("=", 1) for i, a in enumerate(argv[:-1]) if a == "--only"]
    df = store.load(path)
    for k, v in only:
        df = df[df[k].astype(str) == v]
    df = df.assign(_size=df["network"].map({"mlp-4": 0, "mlp-20x6": 1, "mlp-50x2": 2, "mlp-50x3": 3,
                                           "mlp-100x2": 4, "mlp-100x3": 5}).fillna(9))
    picks = []
    for status in ("diverged", "ok"):
        sub = df[df["status"] == status].sort_values(["_size", "rule", "bits"])
        seen = set()
        for _, row in sub.iterrows():
            g = (row["rule"], row["network"])
            if g not in seen:
                seen.add(g)
                picks.append(row["key"])
            if len(picks) >= (n + 1) // 2 * (1 if status == "diverged" else 2):
                break
    bad = 0
    fields = ("test_accuracy", "test_loss", "step_loss", "step_accuracy", "lr", "w_min", "w_max", "g_min", "g_max")
    rows = df.set_index("key")
    for key in picks[:n]:
        with store.open_store(path) as f:
            cfg = json.loads(f["runs"][key].attrs["config"])
        res = train(cfg, probe=layer_probe)
        h = store.history(path, key)
        same = res["status"] == rows.loc[key, "status"] and res["message"] == rows.loc[key, "message"]
        for name in fields:
            ours = [e["layers"][name] if name in ("w_min", "w_max", "g_min", "g_max") else e[name]
                    for e in res["history"]]
            a, b = np.asarray(ours, dtype=np.float64), np.asarray(h[name], dtype=np.float64)
            same &= (a.size == b.size == 0) or np.array_equal(a, b, equal_nan=True)
        bad += not same
        print(f"{key} {cfg['rule']:5s} {cfg['network']:10s} bits={cfg['bits']} {cfg['range']:6s} {cfg['quant']:5s} "
              f"{res['status']:8s} epochs={len(res['history'])} acc={res['test_accuracy']} "
              f"{'SAME' if same else 'DIFFERENT'}  {res['message'][:70]}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
