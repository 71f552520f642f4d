"""What a particle that tilts during a series looks like in ``atom3d predict``'s output.

The demo particle (seed 0, 3 nm, 1000 e/Å², the demo's optics and drift) with no atom
removed, on the zone axis for frames 0–5 and tilted by TILT mrad for frames 6–11; and the
same particle on the zone axis throughout (control). Each series through ``atom3d
predict`` (defaults: 8 passes, change points); prints per series the Ce atoms per frame
(``n_ce``), the Ce columns per frame, and the Ce events (depth changes down / up,
appearances, vanishings) at and away from frame 6. No atom leaves in either series:
every event is false.

    python report/tilt_s27/tilt_series.py OUT_DIR [TILT_MRAD]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from atom3d.demo import simulate_demo_series
from atom3d.inference.series import predict_main
from atom3d.io.results import read_results


def run(out: Path, tilts: list[float], label: str) -> None:
    series = simulate_demo_series(out / label, ce_loss_per_frame=0, tilt_mrad=tilts,
                                  seed=0, progress=False)
    h5 = out / label / "result.h5"
    predict_main([str(series.tif), "-o", str(h5), "--quiet"])
    res = read_results(h5, load_maps=False)
    f, ev = res["frames"], res["events"]
    ce = ev["species"] == "Ce"
    at6 = ev["frame"] == 6
    change = ev["kind"] == "depth_change"
    down = change & (ev["depth_after"] < ev["depth_before"])
    true_ce = [int(c["Ce"]["depth"].sum()) for c in series.truth]
    print(f"{label}: tilt {tilts[0]:g} → {tilts[-1]:g} mrad at frame 6")
    print(f"  true Ce atoms per frame:      {true_ce}")
    print(f"  reported n_ce:                {[int(v) for v in f['n_ce']]}")
    print(f"  reported Ce columns:          {[int(v) for v in f['n_ce_columns']]}")
    for name, sel in (("at frame 6", at6), ("elsewhere", ~at6)):
        s = ce & sel
        steps = (ev["depth_after"][s & change].astype(int)
                 - ev["depth_before"][s & change].astype(int))
        print(f"  Ce events {name}: {int((s & down).sum())} down, "
              f"{int((s & change & ~down).sum())} up (mean step "
              f"{steps.mean() if steps.size else 0:+.2f}), "
              f"{int((s & (ev['kind'] == 'appeared')).sum())} appeared, "
              f"{int((s & (ev['kind'] == 'vanished')).sum())} vanished")
    if (ce & at6 & change).any():
        before = ev["depth_before"][ce & at6 & change].astype(int)
        print(f"  depth before the changes at frame 6: median {np.median(before):.0f}, "
              f"range {before.min()}–{before.max()}")


def main(out: str, tilt: float = 20.0) -> None:
    out_dir = Path(out)
    run(out_dir, [0.0] * 12, "control")
    run(out_dir, [0.0] * 6 + [tilt] * 6, f"tilt{tilt:g}")


if __name__ == "__main__":
    main(sys.argv[1], *(float(a) for a in sys.argv[2:3]))
