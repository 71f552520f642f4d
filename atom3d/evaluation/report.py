"""Plots of an evaluation: accuracy across conditions, reliability, confusion matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atom3d.evaluation.metrics import reliability_curve

LABELS = {
    "dose_e_per_A2": ("dose [e/Å²]", 1.0, True),
    "thickness_A": ("thickness [nm]", 0.1, False),
    "defocus_A": ("defocus [nm] (+ = underfocus)", 0.1, False),
    "tilt_mrad": ("tilt [mrad]", 1.0, False),
    "pixel_size_A": ("pixel size [Å]", 1.0, False),
}
SCORES = (("exact", "exact depth"), ("within1", "depth within ±1"), ("f1", "detection F1"))


def _centre(b: dict, log: bool) -> float:
    return float(np.sqrt(b["lo"] * b["hi"])) if log else 0.5 * (b["lo"] + b["hi"])


def plot_conditions(summary: dict, species: str, path: Path) -> None:
    """Exact, ±1 and F1 against every parameter; all methods on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SCORES), len(LABELS), figsize=(3.2 * len(LABELS), 8.4),
                             sharey="row", squeeze=False)
    for j, (key, (label, scale, log)) in enumerate(LABELS.items()):
        for method, res in summary.items():
            bins = [b for b in res[species][f"by_{key}"] if b["n_images"] > 0]
            x = [_centre(b, log) * scale for b in bins]
            for i, (score, title) in enumerate(SCORES):
                ax = axes[i, j]
                ax.plot(x, [b[score] for b in bins], "o-", label=method, ms=4)
                ax.set_ylim(0, 1.02)
                if log:
                    ax.set_xscale("log")
                if j == 0:
                    ax.set_ylabel(f"{species}: {title}")
                if i == len(SCORES) - 1:
                    ax.set_xlabel(label)
                ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(summary: dict, species: str, path: Path) -> None:
    """Confidence against accuracy of the depth of matched columns (10 bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    for method, res in summary.items():
        agg = res[species]["overall"]
        conf, ok = agg.get("confidence"), agg.get("correct")
        if conf is None or not len(conf) or not np.all(np.isfinite(conf)):
            continue
        curve = reliability_curve(conf, ok, 10)
        m = curve.count > 0
        ax.plot(curve.confidence[m], curve.accuracy[m], "o-",
                label=f"{method} (ECE {agg['ece']:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy of the depth")
    ax.set_title(f"{species} columns: reliability")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(summary: dict, species: str, method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(summary[method][species]["confusion_matrix"], float)
    if cm.size == 0:
        return
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1, origin="lower")
    ax.set_xlabel("predicted depth [atoms]")
    ax.set_ylabel("true depth [atoms]")
    ax.set_title(f"{species}, {method}: fraction of each true depth")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(summary: dict, run: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for sp in ("Ce", "O"):
        p = out_dir / f"{sp.lower()}_conditions.png"
        plot_conditions(summary, sp, p)
        written.append(p)
        p = out_dir / f"{sp.lower()}_reliability.png"
        plot_reliability(summary, sp, p)
        written.append(p)
        for method in summary:
            p = out_dir / f"{sp.lower()}_confusion_{method.replace('+', '_')}.png"
            plot_confusion(summary, sp, method, p)
            written.append(p)
    return written
