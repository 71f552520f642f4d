"""Mean signed Ce depth error by true depth, from ``report/depth_errors_s25/collect.py``
outputs of the tilt stores (markdown on stdout).

    python report/tilt_s27/bias.py 0:data/tilt/cols0.npz 20:data/tilt/cols20.npz ...
"""
from __future__ import annotations

import sys

import numpy as np

BANDS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 16))


def main(items: list[str]) -> None:
    print("| tilt [mrad] | all | " + " | ".join(f"true {a}–{b}" for a, b in BANDS) + " |")
    print("|---|---|" + "---|" * len(BANDS))
    for item in items:
        tilt, path = item.split(":", 1)
        meta = np.load(path)["Ce_meta"]
        meta = meta[meta[:, 7] >= 0]  # matched columns: (…, depth [4], …, true depth [7])
        err, true = meta[:, 4] - meta[:, 7], meta[:, 7]
        cells = [f"{err[(true >= a) & (true <= b)].mean():+.2f}" for a, b in BANDS]
        print(f"| {tilt} | {err.mean():+.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
