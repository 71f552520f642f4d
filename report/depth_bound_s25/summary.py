"""Ideal-observer bound against the shipped model on the same columns and images.

    python report/depth_bound_s25/summary.py data/test_particles.zarr data/cols_particles.npz \
        data/io_a.jsonl data/io_b.jsonl

For every (column, image) of ``ideal_observer.py``: the bound on exact-depth accuracy at
the image's own dose, and whether the model (``collect.py``'s columns, 8 passes) found
that column with the right depth. Printed as a table by dose and by depth, plus JSON.
"""
from __future__ import annotations

import json
import sys

import numpy as np
from scipy.stats import norm

from atom3d.data.store import open_store, structure_columns


def main(store: str, cols: str, *jsonl: str) -> None:
    root = open_store(store)
    z = np.load(cols)
    meta = z["Ce_meta"]  # image, structure, x, y, depth, confidence, presence, true depth
    rows = [json.loads(line) for f in jsonl for line in open(f)]
    out = []
    for r in rows:
        t = structure_columns(root, r["structure"])
        x, y = t["x"][r["column"]], t["y"][r["column"]]
        assert int(t["depth"][r["column"]]) == r["depth"]
        m = meta[meta[:, 0] == r["image"]]
        d = np.hypot(m[:, 2] - x, m[:, 3] - y)
        j = int(np.argmin(d)) if len(d) else -1
        found = j >= 0 and d[j] <= 1.0 and m[j, 7] == r["depth"]
        dose = r["dose"]
        dm, dp = np.sqrt(r["dprime2_minus_per_dose"] * dose), np.sqrt(r["dprime2_plus_per_dose"] * dose)
        um = np.sqrt(r["dprime2_minus_per_dose_optics_unknown"] * dose)
        up = np.sqrt(r["dprime2_plus_per_dose_optics_unknown"] * dose)
        out.append({"dose": dose, "depth": r["depth"],
                    "bound": float(1 - norm.cdf(-dm / 2) - norm.cdf(-dp / 2)),
                    "bound_optics_unknown": float(1 - norm.cdf(-um / 2) - norm.cdf(-up / 2)),
                    "model_exact": bool(found and m[j, 4] == r["depth"]),
                    "model_within1": bool(found and abs(m[j, 4] - r["depth"]) <= 1),
                    "dprime_1000": float(np.sqrt(1000 * min(r["dprime2_minus_per_dose"],
                                                             r["dprime2_plus_per_dose"])))})
    dose = np.array([o["dose"] for o in out])
    depth = np.array([o["depth"] for o in out])
    bound = np.array([o["bound"] for o in out])
    bound_u = np.array([o["bound_optics_unknown"] for o in out])
    ok = np.array([o["model_exact"] for o in out])
    w1 = np.array([o["model_within1"] for o in out])
    d1000 = np.array([o["dprime_1000"] for o in out])
    print("| dose [e/Å²] | pairs | ideal observer, optics known | optics unknown | model exact | model ±1 |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for lo, hi, name in ((50, 173, "100"), (173, 548, "300"), (548, 1732, "1000"),
                         (1732, 5477, "3000"), (5477, 20001, "10000"), (1000, 20001, ">=1000"),
                         (0, 1e9, "all")):
        s = (dose >= lo) & (dose < hi)
        if s.any():
            summary[name] = {"pairs": int(s.sum()), "bound": float(bound[s].mean()),
                             "bound_optics_unknown": float(bound_u[s].mean()),
                             "model_exact": float(ok[s].mean()), "model_within1": float(w1[s].mean())}
            print(f"| {name} | {s.sum()} | {bound[s].mean():.3f} | {bound_u[s].mean():.3f} | "
                  f"{ok[s].mean():.3f} | {w1[s].mean():.3f} |")
    print("\n| true depth | pairs | d' at 1000 e/Å² (median, smaller of ±1) | bound at own dose | model exact |")
    print("|---|---|---|---|---|")
    for lo, hi in ((2, 4), (4, 7), (7, 10), (10, 13), (13, 17)):
        s = (depth >= lo) & (depth < hi)
        if s.any():
            print(f"| {lo}–{hi - 1} | {s.sum()} | {np.median(d1000[s]):.2f} | {bound[s].mean():.3f} | {ok[s].mean():.3f} |")
    print("\n| every pair at the dose [e/Å²] | optics known | optics unknown |")
    print("|---|---|---|")
    fixed = {}
    for dose_ in (100, 300, 1000, 3000, 10000):
        b = []
        for r in rows:
            pair = []
            for suffix in ("", "_optics_unknown"):
                dm = np.sqrt(r["dprime2_minus_per_dose" + suffix] * dose_)
                dp = np.sqrt(r["dprime2_plus_per_dose" + suffix] * dose_)
                pair.append(1 - norm.cdf(-dm / 2) - norm.cdf(-dp / 2))
            b.append(pair)
        b = np.array(b)
        fixed[dose_] = b.mean(0).tolist()
        print(f"| {dose_} | {b[:, 0].mean():.3f} | {b[:, 1].mean():.3f} |")
    summary["every_pair_at_dose"] = fixed
    print(json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:])
