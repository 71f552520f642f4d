"""How much a mis-calibrated pixel size costs the shipped model.

Every image of a test store is predicted as ``atom3d evaluate`` does (same shot noise,
edge cut and matching), except that the model is told a pixel size ``(1 + e)`` times the
true one, as when a file's calibration is off by ``e``. The predicted positions are then
divided by ``(1 + e)`` before matching, so only what the wrong scale does to detection and
depth is measured (not the positions' scale). One network pass (``--no-tta``) for speed.

    python report/calibration_tolerance_s26/tolerance.py data/test_particles.zarr OUT.json
"""
from __future__ import annotations

import json
import sys

from atom3d.evaluation.evaluate import SPECIES, evaluate_store, summarise
from atom3d.inference.predictor import Predictor
from atom3d.models.artifact import load_artifact

ERRORS = (-0.10, -0.06, -0.03, 0.0, 0.03, 0.06, 0.10)


def method(pred: Predictor, e: float):
    def run(counts, params):
        fp = pred.predict(counts, params["pixel_size_A"] * (1 + e))
        return {sp: {"x": fp.columns[sp].x_A / (1 + e), "y": fp.columns[sp].y_A / (1 + e),
                     "depth": fp.columns[sp].depth, "confidence": fp.columns[sp].confidence}
                for sp in SPECIES}
    return run


def main(data: str, out: str) -> None:
    pred = Predictor(load_artifact("ceo2-110"), device="cpu", batch_size=8, tta=False)
    methods = {f"{e:+.2f}": method(pred, e) for e in ERRORS}
    summary = summarise(evaluate_store(data, methods, progress=True))
    rows = {}
    for name, entry in summary.items():
        rows[name] = {}
        for sp in SPECIES:
            for sel in ("overall", "dose_ge_1000"):
                a = entry[sp][sel]
                rows[name][f"{sp}_{sel}"] = {k: a.get(k) for k in ("f1", "exact", "within1", "mae", "ece")}
        print(name, {k: round(v["exact"], 3) for k, v in rows[name].items()}, flush=True)
    with open(out, "w") as f:
        json.dump({"data": data, "errors": ERRORS, "tta_passes": 1, "figures": rows}, f, indent=1,
                  default=float)


if __name__ == "__main__":
    main(*sys.argv[1:3])
