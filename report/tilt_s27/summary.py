"""Table of the tilt study from the JSON files of ``analyse.py`` (markdown on stdout).

    python report/tilt_s27/summary.py report/tilt_s27/tilt*.json
"""
from __future__ import annotations

import json
import sys

import numpy as np


def main(paths: list[str]) -> None:
    runs = sorted((json.load(open(p)) for p in paths), key=lambda r: r["tilt_mrad"])
    print("| tilt [mrad] | images | Ce F1 | Ce exact | Ce ±1 | Ce confidence | Ce ECE | "
          "Ce exact ≥ 1000 e/Å² | Ce ±1 ≥ 1000 | O F1 | O exact | lattice found |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        ce, hi, o = r["Ce"], r["Ce_dose_ge_1000"], r["O"]
        print(f"| {r['tilt_mrad']:.0f} | {r['n_images']} | {ce['f1']:.3f} | {ce['exact']:.3f} | "
              f"{ce['within1']:.3f} | {ce['mean_confidence']:.3f} | {ce['ece']:.3f} | "
              f"{hi['exact']:.3f} | {hi['within1']:.3f} | {o['f1']:.3f} | {o['exact']:.3f} | "
              f"{r['lattice_found_fraction']:.0%} |")
    print()
    print("Per image (median over the images; quartiles in brackets):")
    print()
    print("| tilt [mrad] | Ce mean confidence | Ce exact | weaker {111} spot z | lattice score |")
    print("|---|---|---|---|---|")
    for r in runs:
        im = r["images"]

        def q(values):
            v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
            if not v.size:
                return "–"
            a, b, c = np.percentile(v, [25, 50, 75])
            return f"{b:.2f} ({a:.2f}–{c:.2f})"

        spot = [min(x["spot_z_111"]) if len(x["spot_z_111"]) == 2 else np.nan for x in im]
        print(f"| {r['tilt_mrad']:.0f} | {q(x['ce_mean_confidence'] for x in im)} | "
              f"{q(x['ce_exact'] for x in im)} | {q(spot)} | "
              f"{q(x['lattice_z'] for x in im)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
