"""Summaries and pictures of a dataset (``atom3d info STORE [--plot out.png]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atom3d.data.store import open_store, param, structure_columns


def dataset_summary(path: str | Path) -> dict:
    """Sizes, completeness and parameter ranges of a dataset."""
    root = open_store(path)
    a = root.attrs
    done = np.asarray(root["done"][:])
    out = {"path": str(path), "schema_version": a["schema_version"],
           "atom3d_version": a["atom3d_version"], "seed": a["seed"],
           "n_images": a["n_images"], "n_structures": a["n_structures"],
           "structures_done": int(done.sum()), "complete": bool(a.get("complete", False)),
           "image_shape": list(root["image"].shape[1:]), "max_depth": a["max_depth"]}
    if done.any():
        ranges = {}
        for name in ("pixel_size_A", "dose_e_per_A2", "defocus_A", "cs_A", "tilt_mrad",
                     "thickness_A", "max_ce_depth"):
            v = param(root, name)
            v = v[np.isfinite(v)]
            if v.size:
                ranges[name] = [float(v.min()), float(v.max())]
        out["ranges"] = ranges
    return out


def plot_dataset(path: str | Path, png: str | Path, n: int = 8, seed: int = 0) -> None:
    """Grid of images (with shot noise at their dose) with Ce/O column depths overlaid.

    Top of each pair: the noisy image with Ce columns (circles coloured by depth) and O
    columns (small dots); bottom: the noise-free image with the Ce label map.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atom3d.data.noise import add_shot_noise

    root = open_store(path)
    done = np.flatnonzero(np.asarray(root["done"][:]))
    if not done.size:
        raise ValueError("the dataset has no finished structure yet")
    per = int(root.attrs["images_per_structure"])
    n_images = int(root.attrs["n_images"])
    rng = np.random.default_rng(seed)
    # One image per structure first (variety), then more images of the same structures.
    by_structure = [rng.permutation(np.arange(s * per, min((s + 1) * per, n_images)))
                    for s in rng.permutation(done)]
    order = [int(ims[k]) for k in range(per) for ims in by_structure if k < len(ims)]
    pick = sorted(order[:n])
    names = list(root.attrs["param_names"])
    kmax = int(root.attrs["max_depth"])
    cols = min(4, len(pick))
    rows = -(-len(pick) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.6 * cols, 7.0 * rows), squeeze=False)
    cmap = plt.get_cmap("viridis", kmax)
    for j, i in enumerate(pick):
        pr = dict(zip(names, root["params"][i], strict=True))
        s, p = int(pr["structure_index"]), pr["pixel_size_A"]
        clean = np.asarray(root["image"][i])
        noisy = add_shot_noise(clean, pr["dose_e_per_A2"], p, rng)
        table = structure_columns(root, s)
        ax = axes[2 * (j // cols), j % cols]
        ax.imshow(noisy, cmap="gray")
        ce, ox = table["species"] == 0, table["species"] == 1
        sc = ax.scatter(table["x"][ce] / p, table["y"][ce] / p, c=table["depth"][ce],
                        cmap=cmap, vmin=0.5, vmax=kmax + 0.5, s=14, marker="o", linewidths=0.8)
        sc.set_facecolor("none")
        ax.scatter(table["x"][ox] / p, table["y"][ox] / p, c=table["depth"][ox], cmap=cmap,
                   vmin=0.5, vmax=kmax + 0.5, s=2)
        ax.set_title(f"#{i} {pr['dose_e_per_A2']:.0f} e/Å², Δf {pr['defocus_A'] / 10:.1f} nm,\n"
                     f"Cs {pr['cs_A'] / 1e4:.1f} µm, p {p:.3f} Å", fontsize=8)
        ax.set_xlim(-0.5, clean.shape[1] - 0.5)
        ax.set_ylim(clean.shape[0] - 0.5, -0.5)
        ax.axis("off")
        # Zoom (12 Å square) on the noise-free image around the middle of the structure:
        # label maps (Ce filled, O contour) and column positions must sit on the columns.
        ax2 = axes[2 * (j // cols) + 1, j % cols]
        half = 6.0 / p
        if ce.any():
            mid = np.array([np.median(table["x"][ce]), np.median(table["y"][ce])]) / p
        else:
            mid = np.array(clean.shape[::-1]) / 2
        ax2.imshow(clean, cmap="gray")
        lab = np.asarray(root["label_class"][s, 0]).astype(float)
        ax2.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0.5, vmax=kmax + 0.5, alpha=0.45)
        amp_o = np.asarray(root["label_amp"][s, 1]) / 255.0
        ax2.contour(amp_o, levels=[0.5], colors="orange", linewidths=0.6)
        ax2.plot(table["x"][ce] / p, table["y"][ce] / p, "+", color="red", ms=6)
        ax2.plot(table["x"][ox] / p, table["y"][ox] / p, "x", color="orange", ms=4)
        ax2.set_xlim(mid[0] - half, mid[0] + half)
        ax2.set_ylim(mid[1] + half, mid[1] - half)
        ax2.set_title("zoom 12 Å: Ce (+, fill), O (x, ring)", fontsize=8)
        ax2.axis("off")
    for ax in axes.flat[len(pick) * 2:]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes, shrink=0.5, label="atoms per column (Ce: rings, O: dots)")
    fig.savefig(png, dpi=110)
    plt.close(fig)
