# Session 18 research script (not part of the package): see README.md in this folder.
"""Would a confidence map fitted on isolated particles calibrate isolated particles?

On the columns of ``collect.py``: the ECE as shipped, then a second monotone map
(isotonic, :func:`atom3d.training.calibration.fit_confidence_map`) on top of the shipped
confidence, fitted on one half of the structures and scored on the other (two folds by
structure, repeated over random splits). Per species, and per dose bin for Ce.

    python crossfit.py COLUMNS.npz [SPLITS]
"""
import sys

import numpy as np

from atom3d.evaluation.evaluate import DOSE_CENTRES, DOSE_EDGES
from atom3d.evaluation.metrics import ece
from atom3d.training.calibration import fit_confidence_map


def remap(knots, c):
    return np.interp(c, knots["confidence"], knots["accuracy"])


def main(path: str, splits: int = 20) -> None:
    d = np.load(path)
    for code, sp in enumerate(("Ce", "O")):
        m = d["species"] == code
        conf, ok, s, dose = d["confidence"][m], d["correct"][m], d["structure"][m], d["dose"][m]
        structures = np.unique(s)
        shipped = ece(conf, ok)
        crossed, by_dose = [], []
        for seed in range(splits):
            half = np.random.default_rng(seed).permutation(structures)[: len(structures) // 2]
            a = np.isin(s, half)
            new = np.empty_like(conf)
            for fit, score in ((a, ~a), (~a, a)):
                new[score] = remap(fit_confidence_map(conf[fit], ok[fit]), conf[score])
            crossed.append(ece(new, ok))
            by_dose.append([ece(new[(dose >= lo) & (dose < hi)], ok[(dose >= lo) & (dose < hi)])
                            for lo, hi in zip(DOSE_EDGES[:-1], DOSE_EDGES[1:], strict=True)])
        print(f"{sp}: {m.sum()} columns in {len(structures)} structures; accuracy {ok.mean():.3f}, "
              f"mean confidence {conf.mean():.3f}; ECE shipped {shipped:.3f}, refit on the other "
              f"half of the structures {np.mean(crossed):.3f} (range {min(crossed):.3f}–"
              f"{max(crossed):.3f} over {splits} splits)")
        if sp == "Ce":
            ship = [ece(conf[(dose >= lo) & (dose < hi)], ok[(dose >= lo) & (dose < hi)])
                    for lo, hi in zip(DOSE_EDGES[:-1], DOSE_EDGES[1:], strict=True)]
            print("   dose bin  " + "  ".join(f"{c:>6}" for c in DOSE_CENTRES))
            print("   shipped   " + "  ".join(f"{v:6.3f}" for v in ship))
            print("   refit     " + "  ".join(f"{v:6.3f}" for v in np.nanmean(by_dose, axis=0)))


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
