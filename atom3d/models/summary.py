"""A model artifact described for people: what ``atom3d info MODEL`` prints.

The artifact's ``config.json`` holds everything (ranges in Å, confidence maps of
hundreds of knots); this module reads the parts a microscopist checks before trusting a
model on their data (pixel size, depth classes, the training domain in the units of the
microscope's software, the calibration and the validation figures) and writes them as
short lines. ``atom3d info MODEL --json`` prints the whole configuration instead.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _range(values: Sequence[float] | None, scale: float = 1.0, digits: int = 3) -> str:
    """``lo to hi`` (or one value when they are equal) of ``values`` × ``scale``."""
    if not values:
        return "?"
    lo, hi = (float(v) * scale for v in values)
    fmt = f"{{:.{digits}g}}"
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)} to {fmt.format(hi)}"


def _per_species(values: Mapping[str, Any] | None, fmt: str = "{:.2f}") -> str:
    if not values:
        return "none"
    return ", ".join(f"{sp} {fmt.format(v)}" for sp, v in values.items())


def _store(entry: Mapping[str, Any]) -> str:
    mix = entry.get("structure_mix") or {}
    kinds = (f", {100 * float(mix['p_particle']):.0f} % isolated particles"
             if "p_particle" in mix else "")
    return (f"{Path(str(entry.get('path', '?'))).name} (seed {entry.get('seed', '?')}, "
            f"{entry.get('n_structures', '?')} structures, {entry.get('n_images', '?')} "
            f"images{kinds})")


def _figures(block: Mapping[str, Any]) -> str:
    return (f"F1 {block['f1']:.3f}, exact {block['exact']:.3f}, ±1 {block['within1']:.3f}, "
            f"MAE {block['mae']:.2f}, ECE {block['ece']:.3f}")


#: Key of ``config["metrics"]`` holding the test-set figures by dose
#: (:func:`dose_figures_entry`): what :func:`expected_at_dose` reads.
TEST_BY_DOSE = "test_by_dose"


def dose_figures_entry(metrics_doc: Mapping[str, Any], test_set: str, source: str) -> dict:
    """The ``config["metrics"]["test_by_dose"]`` entry from an ``atom3d evaluate``
    ``metrics.json`` document: per dose bin [e/Å², as evaluated], per species, detection
    F1, exact depth and within-±1 of the network, with the number of network passes."""
    results = metrics_doc["results"]["network"]
    bins = []
    for i, ce in enumerate(results["Ce"]["by_dose_e_per_A2"]):
        row = {"lo": float(ce["lo"]), "hi": float(ce["hi"]), "n_images": int(ce["n_images"])}
        for sp in ("Ce", "O"):
            b = results[sp]["by_dose_e_per_A2"][i]
            row[sp] = {k: float(b[k]) for k in ("f1", "exact", "within1")}
        bins.append(row)
    return {"test_set": test_set, "source": source,
            "passes": int(metrics_doc["methods"]["network"]["tta_passes"]), "bins": bins}


def expected_at_dose(config: Mapping[str, Any], dose_e_per_A2: float) -> str | None:
    """One line: what the model's test set measured at this dose (None without figures,
    or for a dose that is not a finite positive number). Doses beyond the bins take the
    nearest bin and say so."""
    entry = (config.get("metrics") or {}).get(TEST_BY_DOSE)
    try:
        dose = float(dose_e_per_A2)
    except (TypeError, ValueError):
        return None
    if not entry or not entry.get("bins") or not (math.isfinite(dose) and dose > 0):
        return None
    bins = entry["bins"]
    inside = [b for b in bins if b["lo"] <= dose < b["hi"]]
    note = ""
    if inside:
        b = inside[0]
    elif dose < bins[0]["lo"]:
        b, note = bins[0], ", the lowest dose tested"
    else:
        b, note = bins[-1], ", the highest dose tested"
    where = f"{b['lo']:.0f}–{b['hi']:.0f} e/Å²{note}"
    figures = "; ".join(f"{sp} F1 {b[sp]['f1']:.3f}, exact depth {b[sp]['exact']:.3f}, "
                        f"within ±1 {b[sp]['within1']:.3f}" for sp in ("Ce", "O") if sp in b)
    return (f"on its test set ({entry.get('test_set', '?')}; {_passes(entry)}) at {where}, "
            f"one frame at a time, this model scored: {figures}")


def terminal_paragraph(text: str, indent: str = "") -> str:
    """``text`` wrapped at 100 columns; continuation lines indented two spaces more than
    ``indent``. Not broken at hyphens (names like ``hand-made``, ``ceo2-110``)."""
    return textwrap.fill(text, width=100, initial_indent=indent,
                         subsequent_indent=indent + "  ", break_on_hyphens=False)


def _passes(entry: Mapping[str, Any]) -> str:
    n = entry.get("passes", "?")
    return f"{n} pass" if n == 1 else f"{n} passes"


def model_summary(config: Mapping[str, Any], *, n_parameters: int | None = None) -> str:
    """Lines describing the artifact ``config`` (a model's ``config.json``)."""
    arch = config.get("architecture", {})
    classes = config.get("classes", {})
    dom = config.get("training_domain") or {}
    lines = [f"model {config.get('name', '?')} (atom3d {config.get('atom3d_version', '?')}, "
             f"artifact format {config.get('format_version', '?')}); weights sha256 "
             f"{str(config.get('weights_sha256', '?'))[:16]}…"]
    params = f", {n_parameters / 1e6:.1f} M parameters" if n_parameters else ""
    lines.append(f"  network: U-Net, base width {arch.get('base_width', '?')}, depth "
                 f"{arch.get('depth', '?')}{params}")
    lines.append(f"  input: frames resampled to {float(config.get('pixel_size_A', 0)):g} Å/px, "
                 f"{(config.get('normalization') or {}).get('method', '?')}")
    lines.append("  output: per pixel background or a column of 1 … K atoms, K = "
                 + ", ".join(f"{sp} {k}" for sp, k in classes.items()))
    if dom:
        spread = dom.get("focal_spread_A")
        no_aperture = dom.get("p_no_aperture")
        aperture = f"{_range(dom.get('aperture_mrad'))} mrad" + (
            f" (none in {100 * float(no_aperture):.0f} %)" if no_aperture else "")
        depth = dom.get("max_column_depth") or {}
        lines += [
            "  training domain (the simulations it learnt from):",
            f"    zone axis [{''.join(str(v) for v in dom.get('zone_axis', []))}], "
            f"{float(dom.get('energy_keV', 0)):g} kV",
            f"    defocus {_range(dom.get('defocus_A'), 0.1)} nm "
            f"[{dom.get('defocus_convention', '?')}]; Cs (C3) {_range(dom.get('cs_A'), 1e-4)} µm; "
            f"C5 {_range(dom.get('c5_A'), 1e-7)} mm",
            f"    focal spread {_range(spread, 0.1)} nm; astigmatism "
            f"{_range(dom.get('astigmatism_A'), 0.1)} nm; aperture {aperture}; tilt "
            f"{_range(dom.get('tilt_mrad'))} mrad",
            f"    pixel size {_range(dom.get('detector_pixel_size_A'))} Å/px; dose "
            f"{_range(dom.get('dose_e_per_A2'), digits=5)} e/Å² per frame",
            f"    sample thickness {_range(dom.get('thickness_A'), 0.1, 2)} nm; deepest column "
            + (", ".join(f"{sp} {v}" for sp, v in depth.items()) or "?") + " atoms; particles "
            f"{_range(dom.get('particle_diameter_nm'))} nm across",
        ]
        stores = [dom["dataset"]] if dom.get("dataset") else []
        stores += list(dom.get("extra_datasets") or [])
        if stores:
            lines.append("    training stores (last run): " + "; ".join(_store(s) for s in stores))
        if dom.get("extra_datasets_missing"):
            lines.append("    training stores not at hand at export: "
                         + ", ".join(map(str, dom["extra_datasets_missing"])))
    threshold = config.get("column_threshold")
    lines.append(f"  calibration: temperature {_per_species(config.get('temperature'))}; "
                 f"column threshold {_per_species(threshold)}; confidence map "
                 f"{'yes' if config.get('confidence_map') else 'no'}")
    passes = sorted((config.get("pass_calibration") or {}), key=int)
    if passes:
        lines.append("    own calibration for " + ", ".join(passes) + " network passes "
                     "(atom3d predict uses 8 by default)")
    metrics = config.get("metrics") or {}
    val = metrics.get("validation") or {}
    if val:
        lines.append(f"  validation ({val.get('n_images', '?')} images, one pass, before the "
                     "confidence map and the column threshold):")
        for sp in ("Ce", "O"):
            if isinstance(val.get(sp), Mapping) and "f1" in val[sp]:
                lines.append(f"    {sp}: {_figures(val[sp])}")
    test = metrics.get(TEST_BY_DOSE) or {}
    if test.get("bins"):
        lines.append(f"  test set ({test.get('test_set', '?')}; {_passes(test)}), Ce by dose "
                     "[e/Å²]:")
        for b in test["bins"]:
            lines.append(f"    {b['lo']:.0f}–{b['hi']:.0f} ({b['n_images']} images): F1 "
                         f"{b['Ce']['f1']:.3f}, exact {b['Ce']['exact']:.3f}, "
                         f"±1 {b['Ce']['within1']:.3f}")
    ckpt = metrics.get("checkpoint") or {}
    if ckpt:
        lines.append(f"  trained: checkpoint {ckpt.get('file', '?')} at step "
                     f"{ckpt.get('global_step', '?')} (epoch index {ckpt.get('epoch', '?')})")
    lines.append("  (every field: atom3d info MODEL --json)")
    return "\n".join(lines)
