"""How well the CeO2 [110] lattice measures the pixel size (``atom3d.inference.lattice``).

1. Every image of the test stores, with its shot noise as ``atom3d evaluate`` draws it,
   searched around the true pixel size and around a nominal one 8 % too small and 8 %
   too large (``measure_lattice`` without its wide fallback): how often the lattice is
   found (``LatticeCheck.found``: score, both {111}, no strong unexplained spot), the
   scatter of the measured over the true pixel size, by dose; the wide search (no
   nominal) too.
2. Images with no CeO2 [110] lattice: shot noise alone and a smooth amorphous blob of a
   particle's size, at 100, 1000 and 10 000 e/Å² (5 each); and the real microscope
   images of ``../shared/realdata`` (SrTiO3 and MoS2 STEM, a Velox TEM stack), searched
   around their calibration and over the wide range.

    python report/calibration_tolerance_s26/lattice_check.py OUT.json data/test_particles.zarr data/test2.zarr
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from atom3d.data.noise import add_shot_noise
from atom3d.data.store import open_store
from atom3d.evaluation.evaluate import evaluation_image
from atom3d.inference.lattice import measure_lattice, series_lattice
from atom3d.io.readers import open_series

REAL = ["openNCEM/ncempy/data/16_STOimage.emi",
        "TEMUL/temul/example_data/experimental/example_Se_implanted_MoS2.dm3",
        "rosettasciio/rsciio/tests/data/emd/fei_example_tem_stack.emd"]


def stores(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        root = open_store(path)
        names = list(root.attrs["param_names"])
        done = np.asarray(root["done"][:], bool)
        per, n = int(root.attrs["images_per_structure"]), int(root.attrs["n_images"])
        idx = [i for s in np.flatnonzero(done) for i in range(s * per, min((s + 1) * per, n))]
        for i in tqdm(idx, desc=Path(path).name):
            im = evaluation_image(root, i, names, 12345, 1.0)
            p = float(im.params["pixel_size_A"])
            row = {"store": Path(path).name, "index": i, "pixel_size_A": p,
                   "dose": float(im.params["dose_e_per_A2"]),
                   "thickness_A": float(im.params.get("thickness_A", np.nan))}
            for label, nominal in (("true", p), ("minus8", p / 1.08), ("plus8", p * 1.08),
                                   ("wide", None)):
                c = measure_lattice([im.counts], nominal)
                row[label] = {"ratio_to_true": c.pixel_size_A / p, "z": c.z,
                              "unexplained": c.unexplained}
            rows.append(row)
    return rows


def negatives(realdata: Path) -> list[dict]:
    rng = np.random.default_rng(7)
    out = []
    for dose in (100, 1000, 10000):
        for _k in range(5):
            flat = np.ones((256, 256))
            counts = add_shot_noise(flat, dose, 0.2, rng)
            c = measure_lattice([counts], 0.2)
            out.append({"what": f"shot noise only, {dose} e/Å²", "z": c.z, "found": c.found})
            blob = 1 - 0.3 * np.exp(-((np.indices((256, 256)) - 128) ** 2).sum(0) / (2 * 40 ** 2))
            blob = ndimage.gaussian_filter(blob + 0.05 * rng.standard_normal((256, 256)), 3)
            counts = add_shot_noise(np.clip(blob, 0, None), dose, 0.2, rng)
            c = measure_lattice([counts], 0.2)
            out.append({"what": f"amorphous blob, {dose} e/Å²", "z": c.z, "found": c.found})
    for rel in REAL:
        path = realdata / rel
        if not path.exists():
            continue
        with open_series(path) as s:
            c = series_lattice(s, s.pixel_size_A)
            w = series_lattice(s, None)
            out.append({"what": rel, "pixel_size_A": s.pixel_size_A, "z": c.z, "found": c.found,
                        "spot_z_111": c.spot_z[:2], "unexplained": c.unexplained,
                        "wide_z": w.z, "wide_found": w.found})
    return out


def summary(rows: list[dict]) -> dict:
    res = {}
    for store in sorted({r["store"] for r in rows}):
        for label in ("true", "minus8", "plus8", "wide"):
            sel = [r for r in rows if r["store"] == store]
            for lo, hi in ((0, 550), (550, 1e9), (0, 1e9)):
                s2 = [r for r in sel if lo <= r["dose"] < hi]
                ratio = np.array([r[label]["ratio_to_true"] for r in s2])
                found = np.isfinite(ratio)
                err = ratio[found] - 1
                res[f"{store} {label} dose {lo}-{hi:g}"] = {
                    "n": len(s2), "found": float(found.mean()),
                    "median_error": float(np.median(err)) if err.size else None,
                    "abs_error_p95": float(np.percentile(np.abs(err), 95)) if err.size else None,
                    "abs_error_max": float(np.abs(err).max()) if err.size else None,
                    "over_1pct": int((np.abs(err) > 0.01).sum())}
    return res


if __name__ == "__main__":
    out = sys.argv[1]
    rows = stores(sys.argv[2:])
    neg = negatives(Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata")
    doc = {"summary": summary(rows), "negatives": neg, "rows": rows}
    Path(out).write_text(json.dumps(doc, indent=1, default=float))
    for k, v in doc["summary"].items():
        print(k, v)
    for r in neg:
        print(r)
