"""The shipped model off the zone axis: accuracy, confidence and the lattice check per image.

For one store of ``simulate.sh`` (the same 16 particles at one tilt), runs the model as
``atom3d evaluate`` does (noise seed 12345, 8 passes, 1 Å edge cut, matching 1.0 / 0.7 Å)
and writes one JSON line: per species the detection counts, exact and ±1 depth accuracy
of the matched columns, their mean reported confidence and the ECE (10 bins), all
images and those at ≥ 1000 e/Å²; and per image the mean Ce confidence, the exact-depth
accuracy and what the CeO2 lattice check of ``atom3d predict`` says of the noisy image
(found, score, the two {111} spots' z).

    python report/tilt_s27/analyse.py data/tilt/tilt20.zarr report/tilt_s27/tilt20.json
"""
from __future__ import annotations

import json
import sys

import numpy as np
from tqdm import tqdm

from atom3d.data.store import open_store
from atom3d.evaluation.evaluate import MATCH_A, evaluation_image
from atom3d.evaluation.metrics import match_columns
from atom3d.inference.lattice import measure_lattice
from atom3d.inference.predictor import Predictor
from atom3d.models.artifact import load_artifact

SPECIES = ("Ce", "O")


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width confidence bins."""
    if not conf.size:
        return float("nan")
    k = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = k == b
        if sel.any():
            total += sel.sum() * abs(conf[sel].mean() - correct[sel].mean())
    return float(total / conf.size)


def figures(rows: list[tuple], n_true: int) -> dict:
    """Counts and accuracies of (matched, depth, true depth, confidence) rows."""
    a = np.array(rows, float).reshape(-1, 4)
    matched = a[:, 0] > 0
    tp, fp = int(matched.sum()), int((~matched).sum())
    fn = n_true - tp
    d, t, c = a[matched, 1], a[matched, 2], a[matched, 3]
    correct = (d == t).astype(float)
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    return {"tp": tp, "fp": fp, "fn": fn, "f1": 2 * prec * rec / max(prec + rec, 1e-12),
            "exact": float(correct.mean()) if tp else float("nan"),
            "within1": float((np.abs(d - t) <= 1).mean()) if tp else float("nan"),
            "mean_confidence": float(c.mean()) if tp else float("nan"),
            "ece": ece(c, correct)}


def main(data: str, out: str, noise_seed: int = 12345, edge_A: float = 1.0) -> None:
    root = open_store(data)
    names = list(root.attrs["param_names"])
    per, n_images = int(root.attrs["images_per_structure"]), int(root.attrs["n_images"])
    done = np.asarray(root["done"][:], bool)
    indices = [i for s in np.flatnonzero(done) for i in range(s * per, min((s + 1) * per, n_images))]
    pred = Predictor(load_artifact("ceo2-110"), device="cpu", batch_size=8, tta=8)
    rows = {(sp, high): [] for sp in SPECIES for high in (False, True)}
    n_true = {key: 0 for key in rows}
    images = []
    for i in tqdm(indices, unit="image"):
        im = evaluation_image(root, i, names, noise_seed, edge_A)
        params, counts, t, inside = im.params, im.counts, im.truth, im.truth_inside
        p = params["pixel_size_A"]
        high = params["dose_e_per_A2"] >= 1000
        fp = pred.predict(counts, p)
        own = {}
        for code, sp in enumerate(SPECIES):
            tab = fp.columns[sp]
            m = (t["species"] == code) & inside
            txy = np.column_stack([t["x"][m], t["y"][m]])
            pidx = np.flatnonzero(im.inside({"x": tab.x_A, "y": tab.y_A}))
            pxy = np.column_stack([tab.x_A[pidx], tab.y_A[pidx]])
            pi, ti = match_columns(pxy, txy, MATCH_A[sp])
            true_depth = np.full(len(pidx), -1)
            true_depth[pi] = t["depth"][m][ti]
            these = [(td >= 0, int(tab.depth[k]), int(td), float(tab.confidence[k]))
                     for k, td in zip(pidx, true_depth, strict=True)]
            own[sp] = figures(these, int(m.sum()))
            for key in ((sp, False), (sp, True)) if high else ((sp, False),):
                rows[key] += these
                n_true[key] += int(m.sum())
        check = measure_lattice([np.asarray(counts, np.float64)], p)
        images.append({"image": int(i), "dose_e_per_A2": float(params["dose_e_per_A2"]),
                       "tilt_mrad": float(params["tilt_mrad"]),
                       "thickness_A": float(params["thickness_A"]),
                       "ce_f1": own["Ce"]["f1"], "ce_exact": own["Ce"]["exact"],
                       "ce_mean_confidence": own["Ce"]["mean_confidence"],
                       "lattice_found": bool(check.found), "lattice_z": float(check.z),
                       "spot_z_111": [float(z) for z in check.spot_z[:2]]})
    result = {"data": data, "n_images": len(indices),
              "tilt_mrad": float(np.median([r["tilt_mrad"] for r in images])),
              **{f"{sp}{'_dose_ge_1000' if high else ''}": figures(rows[(sp, high)],
                                                                   n_true[(sp, high)])
                 for sp, high in rows},
              "lattice_found_fraction": float(np.mean([r["lattice_found"] for r in images])),
              "images": images}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    ce = result["Ce"]
    print(f"{data}: tilt {result['tilt_mrad']:.0f} mrad: Ce F1 {ce['f1']:.3f} exact "
          f"{ce['exact']:.3f} ±1 {ce['within1']:.3f} confidence {ce['mean_confidence']:.3f} "
          f"ECE {ce['ece']:.3f}; lattice found in {result['lattice_found_fraction']:.0%}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
