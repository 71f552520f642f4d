# Session 12 research script (not part of the package): see README.md in this folder.
"""Run `atom3d predict` (the package's code) on stored demo TIFFs and score the changes.

Usage: ``RING_PENALTY=4.5 RING_SIGMA=1.0 python validate.py SMOOTHING DEMO_DIR...``
(``RING_PENALTY``, ``RING_STEP``, ``RING_SIGMA`` override the package's constants).
"""
import os
import sys
from pathlib import Path

from offline import load

import atom3d.inference.series as series_mod
from atom3d.demo import temporal_scores
from atom3d.inference.predictor import Predictor
from atom3d.inference.series import predict_series
from atom3d.io.readers import open_series
from atom3d.io.results import read_results
from atom3d.models.artifact import load_artifact

OVERRIDES = {"RING_PENALTY": "CHANGEPOINT_RING_PENALTY", "RING_STEP": "CHANGEPOINT_RING_MIN_STEP",
             "RING_SIGMA": "CHANGEPOINT_RING_MIN_STEP_SIGMA"}


def main(smoothing, dirs):
    for env, name in OVERRIDES.items():
        if env in os.environ:
            setattr(series_mod, name, float(os.environ[env]))
    tag = "_".join(os.environ.get(env, "d") for env in OVERRIDES)
    pred = Predictor(load_artifact("ceo2-110"), tta=8)
    reported = true = flickers = steady = 0
    worst = 0.0
    for d in dirs:
        _, truth, drift = load(d)
        out = d / f"val_{smoothing}_{tag}.h5"
        with open_series(d / "demo_series.tif") as s:
            predict_series(s, out, pred, smoothing=smoothing, progress=False)
        sc = temporal_scores(read_results(out, load_maps=False), truth, drift)
        print(d.name, sc, flush=True)
        reported += sc["changes_reported"]
        true += sc["changes_true"]
        flickers += sc["flickers"]
        steady += sc["steady_pairs"]
        worst = max(worst, sc["flicker"])
    print(smoothing, f"{reported}/{true} ({reported / true:.0%}) flicker "
          f"{flickers / steady:.1%} worst {worst:.1%}")


if __name__ == "__main__":
    main(sys.argv[1], [Path(a) for a in sys.argv[2:]])
