# Session 22 research script (not part of the package): see README.md in this folder.
"""Does ``atom3d predict`` on ImageJ TIFF files give what ``atom3d evaluate`` scores?

Issue 3's held-out check runs ``atom3d predict`` on single-image ImageJ-calibrated TIFF
files; the model card's figures come from ``atom3d evaluate`` on zarr stores. For the
first N images of a store this script draws the noisy image ``atom3d evaluate`` draws
(noise seed 12345), writes it as an ImageJ TIFF (float32, calibration in nm, as Fiji
saves it), runs the real CLI once on all of them (``atom3d predict DIR/*.tif -o OUTDIR``,
default options), reads every results file, compares its Ce and O columns with those
``atom3d evaluate`` finds for the same image, and scores both against the truth the way
``atom3d evaluate`` does.

    python parity.py STORE.zarr WORKDIR [N]
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from atom3d.data.noise import add_shot_noise
from atom3d.data.store import open_store, structure_columns
from atom3d.evaluation.evaluate import (
    MATCH_A,
    SPECIES,
    _inside,
    _subset,
    evaluate_store,
    network_method,
)
from atom3d.evaluation.metrics import aggregate, column_metrics
from atom3d.io.results import read_results

NOISE_SEED = 12345


def main(store: str, work: str, n: int = 64) -> None:
    work = Path(work)
    (work / "tif").mkdir(parents=True, exist_ok=True)
    root = open_store(store)
    names = list(root.attrs["param_names"])
    n = min(n, int(root.attrs["n_images"]))
    for i in range(n):
        params = dict(zip(names, np.asarray(root["params"][i], float), strict=True))
        p = params["pixel_size_A"]
        counts = add_shot_noise(np.asarray(root["image"][i]), params["dose_e_per_A2"], p,
                                np.random.default_rng([NOISE_SEED, i]))
        tifffile.imwrite(work / "tif" / f"img{i:04d}.tif", counts.astype(np.float32),
                         imagej=True, resolution=(10.0 / p, 10.0 / p), metadata={"unit": "nm"})
    files = [str(work / "tif" / f"img{i:04d}.tif") for i in range(n)]
    atom3d = Path(sys.executable).with_name("atom3d")  # the CLI of this environment
    subprocess.run([str(atom3d), "predict", *files, "-o", str(work / "h5"), "--quiet"],
                   check=True)

    stash = []
    run, _ = network_method("ceo2-110", tta=8)

    def keep(counts, params):
        stash.append(run(counts, params))
        return stash[-1]

    res = evaluate_store(store, {"network": keep}, noise_seed=NOISE_SEED, limit=n,
                         progress=False)
    if res["indices"] != list(range(n)):  # the TIFF of image i must be evaluate's image i
        raise SystemExit("the store has unfinished structures among its first images")
    per_cli = {sp: [] for sp in SPECIES}
    diff = {"pixel_size_rel": 0.0, "position_A": 0.0, "confidence": 0.0, "depth_mismatch": 0,
            "count_mismatch": 0, "columns": 0}
    for i, params in enumerate(res["params"]):
        out = read_results(work / "h5" / f"img{i:04d}.h5", load_maps=False)
        p = params["pixel_size_A"]
        diff["pixel_size_rel"] = max(diff["pixel_size_rel"], abs(out["attrs"]["pixel_size_A"] / p - 1))
        cols = out["columns"]
        truth_all = structure_columns(root, int(params["structure_index"]))
        h, w = root["image"].shape[1:]
        hx, hy = (w - 1) * p - 1.0, (h - 1) * p - 1.0
        for code, sp in enumerate(SPECIES):
            m = cols["species"] == sp
            cli = {k: np.asarray(cols[k])[m] for k in ("x", "y", "depth", "confidence")}
            ref = {k: np.asarray(v) for k, v in stash[i][sp].items()}
            diff["columns"] += len(ref["x"])
            if len(cli["x"]) != len(ref["x"]):
                diff["count_mismatch"] += 1
            else:
                a, b = np.lexsort((cli["x"], cli["y"])), np.lexsort((ref["x"], ref["y"]))
                d = np.hypot(cli["x"][a] - ref["x"][b], cli["y"][a] - ref["y"][b])
                diff["position_A"] = max(diff["position_A"], float(d.max(initial=0)))
                diff["confidence"] = max(diff["confidence"], float(np.abs(
                    cli["confidence"][a] - ref["confidence"][b]).max(initial=0)))
                diff["depth_mismatch"] += int(np.sum(cli["depth"][a] != ref["depth"][b]))
            tm = (truth_all["species"] == code) & _inside(truth_all, 1.0, hx, hy)
            truth = {k: truth_all[k][tm] for k in ("x", "y", "depth")}
            per_cli[sp].append(column_metrics(_subset(cli, _inside(cli, 1.0, hx, hy)), truth,
                                              MATCH_A[sp]))
    print(f"{n} images; atom3d predict on TIFF against atom3d evaluate's columns: {diff}")
    for sp in SPECIES:
        ev, cl = aggregate(res["per_image"]["network"][sp]), aggregate(per_cli[sp])
        print(f"{sp}: evaluate  F1 {ev['f1']:.4f} exact {ev['exact']:.4f} within1 "
              f"{ev['within1']:.4f} MAE {ev['mae']:.3f} ECE {ev['ece']:.4f}")
        print(f"{sp}: predict   F1 {cl['f1']:.4f} exact {cl['exact']:.4f} within1 "
              f"{cl['within1']:.4f} MAE {cl['mae']:.3f} ECE {cl['ece']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
