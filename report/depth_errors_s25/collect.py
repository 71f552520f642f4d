"""Per-column depth posteriors of the shipped model on a test store, with the truth.

Runs the model exactly as ``atom3d evaluate`` does (same noise seed, same edge cut, same
matching, 8 passes) and keeps, for every matched Ce and O column, its pooled class
probabilities, predicted and true depth, position, and the image and structure it is in;
plus the whole true column table of each image (for geometry). Output: one ``.npz``.

    python report/depth_errors_s25/collect.py data/test_particles.zarr /tmp/cols.npz
"""
from __future__ import annotations

import sys

import numpy as np
from tqdm import tqdm

from atom3d.data.store import open_store
from atom3d.evaluation.evaluate import MATCH_A, evaluation_image
from atom3d.evaluation.metrics import match_columns
from atom3d.inference.predictor import Predictor
from atom3d.models.artifact import load_artifact

SPECIES = ("Ce", "O")


def main(data: str, out: str, noise_seed: int = 12345, edge_A: float = 1.0) -> None:
    root = open_store(data)
    names = list(root.attrs["param_names"])
    per, n_images = int(root.attrs["images_per_structure"]), int(root.attrs["n_images"])
    done = np.asarray(root["done"][:], bool)
    indices = [i for s in np.flatnonzero(done) for i in range(s * per, min((s + 1) * per, n_images))]
    pred = Predictor(load_artifact("ceo2-110"), device="cpu", batch_size=8, tta=8)
    rows = {sp: [] for sp in SPECIES}
    truth_rows = []
    params_all = []
    for i in tqdm(indices, unit="image"):
        im = evaluation_image(root, i, names, noise_seed, edge_A)
        params, counts, t, inside = im.params, im.counts, im.truth, im.truth_inside
        params_all.append([params[n] for n in names])
        p, s = params["pixel_size_A"], int(params["structure_index"])
        for x, y, c, d, ins in zip(t["x"], t["y"], t["species"], t["depth"], inside, strict=True):
            truth_rows.append((i, s, c, x, y, d, ins))
        fp = pred.predict(counts, p)
        for code, sp in enumerate(SPECIES):
            tab = fp.columns[sp]
            m = (t["species"] == code) & inside
            txy = np.column_stack([t["x"][m], t["y"][m]])
            pm = im.inside({"x": tab.x_A, "y": tab.y_A})
            pidx = np.flatnonzero(pm)
            pxy = np.column_stack([tab.x_A[pidx], tab.y_A[pidx]])
            pi, ti = match_columns(pxy, txy, MATCH_A[sp])
            matched = np.zeros(len(pidx), bool)
            matched[pi] = True
            td = np.full(len(pidx), -1)
            td[pi] = t["depth"][m][ti]
            for r, k in enumerate(pidx):
                rows[sp].append((i, s, tab.x_A[k], tab.y_A[k], int(tab.depth[k]),
                                 float(tab.confidence[k]), float(tab.p_column[k]), int(td[r]),
                                 tab.probs[k].astype(np.float32)))
    kind_names = list(root.attrs.get("structure_param_names", []))
    kinds = (np.asarray(root["structure_params"][:, kind_names.index("kind")], float)
             if "kind" in kind_names else np.full(len(done), np.nan))
    arrays = {"param_names": np.array(names), "params": np.array(params_all),
              "structure_kind": kinds,  # per structure: 0 particle, 1 profile crystal
              "indices": np.array(indices),
              "truth": np.array(truth_rows, float)}
    for sp in SPECIES:
        r = rows[sp]
        arrays[f"{sp}_meta"] = np.array([x[:8] for x in r], float)
        arrays[f"{sp}_probs"] = np.stack([x[8] for x in r])
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: " + ", ".join(f"{sp} {len(rows[sp])} columns" for sp in SPECIES))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
