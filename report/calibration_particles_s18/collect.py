# Session 18 research script (not part of the package): see README.md in this folder.
"""Per matched column of a test store: the shipped model's calibrated depth confidence,
whether the depth is right, the species, the structure and the image's dose, as
``atom3d evaluate`` computes them (8 passes, noise seed 12345). Saved to an .npz.

    python collect.py STORE.zarr OUT.npz
"""
import sys

import numpy as np

from atom3d.evaluation.evaluate import SPECIES, evaluate_store, network_method


def main(store: str, out: str) -> None:
    run = evaluate_store(store, {"network": network_method("ceo2-110", tta=8)[0]})
    cols = {k: [] for k in ("species", "structure", "dose", "confidence", "correct", "true_depth")}
    for params, per in zip(run["params"], zip(*(run["per_image"]["network"][sp] for sp in SPECIES),
                                               strict=True), strict=True):
        for code, res in enumerate(per):
            n = len(res["correct"])
            cols["species"].append(np.full(n, code))
            cols["structure"].append(np.full(n, int(params["structure_index"])))
            cols["dose"].append(np.full(n, params["dose_e_per_A2"]))
            cols["confidence"].append(np.asarray(res["confidence"], float))
            cols["correct"].append(np.asarray(res["correct"], bool))
            cols["true_depth"].append(np.asarray(res["true_depth"], int))
    np.savez(out, **{k: np.concatenate(v) for k, v in cols.items()})


if __name__ == "__main__":
    main(*sys.argv[1:3])
