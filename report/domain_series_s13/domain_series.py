# Session 13 research script (not part of the package): see README.md in this folder.
"""Demo-like in situ series over the model's whole domain, predicted and scored.

The demo series has one optical condition (300 kV, Cs −13 µm, 6 nm overfocus, no
aperture, 0.2 Å/px, no tilt). The series issue 4 is checked on is "simulated
independently within the default domain": any optics of ``configs/simulate/ceo2_110.yaml``,
pixel sizes 0.15–0.3 Å/px, tilt ≤ 10 mrad. For each seed this script draws such a
condition, simulates a 12-frame drifting series that loses 3 surface Ce atoms per frame
(:func:`atom3d.demo.simulate_demo_series`), runs the ``atom3d predict`` pipeline with its
defaults on the ImageJ TIFF and scores it against the truth
(:func:`atom3d.demo.evaluate_against_truth`).

    python report/domain_series_s13/domain_series.py OUT_DIR SEED [SEED ...] [--dose D]

Writes ``OUT_DIR/seed<N>/`` (the demo files and ``metrics.json`` with the condition) and
skips seeds whose ``metrics.json`` exists (resumable).
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from atom3d.demo import evaluate_against_truth, simulate_demo_series
from atom3d.inference.predictor import Predictor
from atom3d.inference.series import predict_series
from atom3d.io.readers import open_series
from atom3d.models.artifact import load_artifact
from atom3d.simulation.campaign import load_campaign_config
from atom3d.simulation.optics import draw_optics

ROOT = Path(__file__).resolve().parents[2]


def draw_condition(seed: int, dose: float | None) -> dict:
    """One condition within the default domain, reproducible from ``seed``."""
    cfg = load_campaign_config(ROOT / "configs/simulate/ceo2_110.yaml")
    rng = np.random.default_rng([13, seed])
    optics = draw_optics(cfg.optics, rng)
    pixel = float(rng.uniform(0.15, 0.3))
    diameter_nm = float(rng.uniform(2.5, 4.0))
    field_A = max(35.2, 10.0 * diameter_nm + 12.0)
    return {
        "optics": optics,
        "pixel_size_A": pixel,
        "image_px": 2 * round(field_A / pixel / 2),
        "diameter_nm": diameter_nm,
        "rotation_rad": float(rng.uniform(0, np.pi)),
        "tilt_mrad": float(rng.uniform(0, 10)),
        "tilt_azimuth_rad": float(rng.uniform(0, 2 * np.pi)),
        "dose_e_per_A2": float(dose) if dose else 1000.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("seeds", type=int, nargs="+")
    ap.add_argument("--dose", type=float, default=None)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    predictor = Predictor(load_artifact("ceo2-110"), tta=8)
    for seed in args.seeds:
        d = args.out / f"seed{seed}{args.tag}"
        if (d / "metrics.json").exists():
            continue
        cond = draw_condition(seed, args.dose)
        t0 = time.perf_counter()
        sim = simulate_demo_series(
            d, n_frames=12, image_px=cond["image_px"], pixel_size_A=cond["pixel_size_A"],
            diameter_nm=cond["diameter_nm"], dose_e_per_A2=cond["dose_e_per_A2"],
            seed=seed, optics=cond["optics"], rotation_rad=cond["rotation_rad"],
            tilt_mrad=cond["tilt_mrad"], tilt_azimuth_rad=cond["tilt_azimuth_rad"],
            progress=False)
        t_sim = time.perf_counter() - t0
        with open_series(sim.tif) as series:
            predict_series(series, d / "demo.h5", predictor, progress=False)
        scores = evaluate_against_truth(d / "demo.h5", sim.truth, sim.drift_A)
        record = {k: v for k, v in cond.items() if k != "optics"}
        record["optics"] = {k: (None if not math.isfinite(v) else v)
                            for k, v in cond["optics"].as_dict().items()}
        record.update(seed=seed, simulate_s=round(t_sim, 1),
                      total_s=round(time.perf_counter() - t0, 1), **scores)
        (d / "metrics.json").write_text(json.dumps(record, indent=1, allow_nan=True) + "\n")
        tm = scores["Ce_time"]
        o = cond["optics"]
        print(f"seed {seed}: {cond['pixel_size_A']:.3f} A/px df {o.defocus_A / 10:+.1f} nm "
              f"Cs {o.cs_A / 1e4:+.1f} um ap {o.aperture_mrad:.0f} tilt {cond['tilt_mrad']:.1f} "
              f"| Ce F1 {scores['Ce']['f1']:.3f} exact {scores['Ce']['exact']:.3f} "
              f"| changes {tm['changes_reported']}/{tm['changes_true']} "
              f"flicker {tm['flicker']:.3f} | {record['total_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
