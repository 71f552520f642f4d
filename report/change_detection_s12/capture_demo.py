# Session 12 research script (not part of the package): see README.md in this folder.
"""Run `atom3d demo` for one seed, recording each frame's structure and clean image."""
import sys
from pathlib import Path

import numpy as np

import atom3d.data.noise as noise
import atom3d.structures.columns as columns
from atom3d.demo import demo_main

seed, dose, out = int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
rec = {"st": [], "clean": []}
_place, _noise = columns.place, noise.add_shot_noise


def place(*a, **k):
    st = _place(*a, **k)
    rec["st"].append(st)
    return st


def add_shot_noise(image, *a, **k):
    rec["clean"].append(np.asarray(image, np.float32).copy())
    return _noise(image, *a, **k)


columns.place, noise.add_shot_noise = place, add_shot_noise
rc = demo_main(["--seed", str(seed), "--dose", str(dose), "--out", str(out), "--quiet"])
np.savez_compressed(out / "capture.npz",
                    clean=np.stack(rec["clean"]),
                    **{f"pos{t}": s.positions for t, s in enumerate(rec["st"])},
                    **{f"spc{t}": s.species for t, s in enumerate(rec["st"])})
sys.exit(rc)
