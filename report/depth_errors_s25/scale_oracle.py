"""Session 28: how much of the Ce depth error is a per-image scale or offset of the depths.

    python report/depth_errors_s25/scale_oracle.py data/cols_particles.npz

Reads ``collect.py``'s output. For each image, the expected depth of every matched Ce
column (pooled probabilities of classes 1..K, renormalised) is corrected by the best
per-image offset, scale, or affine map fitted *on the truth* (an oracle), rounded and
scored. If frame standardisation (which hides the absolute contrast) or a misjudged
optics shifted or stretched a whole image's depths, these oracles would recover much of
the gap; session 28 measured 0.607 (argmax) → 0.677 (offset), 0.688 (scale), 0.711 (affine).
"""
import json
import sys

import numpy as np
from analyse import image_groups, load  # same folder


def main(path: str) -> dict:
    _, _, _, _, meta, probs = load(path)
    keep = meta[:, 7] >= 0
    meta, probs = meta[keep], probs[keep]
    pred, true = meta[:, 4].astype(int), meta[:, 7].astype(int)
    p = probs[:, 1:] / probs[:, 1:].sum(1, keepdims=True)
    ev = (p * np.arange(1, p.shape[1] + 1)).sum(1)
    out = {"n_columns": int(len(true)), "argmax": float(np.mean(pred == true)),
           "rounded_mean": float(np.mean(np.round(ev) == true))}
    for name in ("offset", "scale", "affine"):
        right = 0
        for g in image_groups(meta):
            t, e = true[g], ev[g]
            if name == "offset":
                y = e + np.mean(t - e)
            elif name == "scale":
                y = e * (t @ e) / (e @ e)
            else:
                a = np.c_[e, np.ones_like(e)]
                y = a @ np.linalg.lstsq(a, t, rcond=None)[0]
            right += int(np.sum(np.round(y) == t))
        out[f"oracle_{name}"] = right / len(true)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
