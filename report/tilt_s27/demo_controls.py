"""Controls for the collective-change flag: ordinary demo series (3 surface Ce atoms lost
per frame, no tilt), seeds 1 and 2 at 1000 e/Å² and seed 0 at 300 e/Å², through
``atom3d predict``; prints the flagged frames and the Ce depth changes per frame.

    python report/tilt_s27/demo_controls.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np

from atom3d.demo import simulate_demo_series
from atom3d.inference.series import predict_main
from atom3d.io.results import read_results

out = Path(sys.argv[1])
for seed, dose in ((1, 1000.0), (2, 1000.0), (0, 300.0)):
    d = out / f"demo_s{seed}_d{dose:g}"
    s = simulate_demo_series(d, seed=seed, dose_e_per_A2=dose, progress=False)
    predict_main([str(s.tif), "-o", str(d / "r.h5"), "--quiet"])
    r = read_results(d / "r.h5", load_maps=False)
    e = r["events"]
    ce = (e["species"] == "Ce") & (e["kind"] == "depth_change")
    per = np.bincount(e["frame"][ce].astype(int), minlength=12).tolist()
    flagged = np.flatnonzero(r["frames"]["collective_change"]).tolist()
    columns = int(np.median(r["frames"]["n_ce_columns"]))
    print(f"seed {seed} dose {dose:g}: flagged {flagged}, Ce depth changes per frame {per}, "
          f"Ce columns {columns}", flush=True)
