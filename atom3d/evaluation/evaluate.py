"""``atom3d evaluate``: the model (and optionally the classical baseline) on a test dataset.

Every test image gets shot noise at its stored dose from a generator seeded by
``(noise_seed, image index)`` — the same noisy image for every method and every rerun —
and then goes through exactly what ``atom3d predict`` does to a frame
(:class:`atom3d.inference.predictor.Predictor`: resample, normalise, tile, columns).
Predicted columns are matched to the true ones (Hungarian, 1.0 Å for Ce, 0.7 Å for O).
Columns within ``edge_A`` of the image border are scored for neither side.

The baseline's columns do not depend on the model, and they cost seconds per image (a
thickness library simulated for every image's optics). They are cached per image
(:class:`BaselineCache`, default ``~/.cache/atom3d/baseline``, ``--baseline-cache``): the
key hashes the noise-free image, its parameters, the noise seed, the filter and the
source of the baseline and of the simulation code it uses, so a cached entry is reused
only where recomputing it would give the same columns. Re-evaluating a new model
against the baseline then takes the network's time only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atom3d.data.noise import add_shot_noise
from atom3d.data.store import open_store, structure_columns
from atom3d.errors import UserError
from atom3d.evaluation.metrics import aggregate, breakdown, column_metrics, confusion_matrix
from atom3d.structures.generate import STRUCTURE_KINDS

SPECIES = ("Ce", "O")
MATCH_A = {"Ce": 1.0, "O": 0.7}
#: Dose bins [e/Å²]: geometric midpoints around 100, 300, 1000, 3000, 10 000 (table rows).
DOSE_EDGES = [50.0, 173.2, 547.7, 1732.1, 5477.2, 20000.0]
DOSE_CENTRES = [100, 300, 1000, 3000, 10000]
BREAKDOWNS = {
    "dose_e_per_A2": DOSE_EDGES,
    "thickness_A": [0, 20, 40, 60, 80],
    "defocus_A": [-100, -50, 0, 50, 100],
    "tilt_mrad": [0, 2.5, 5, 7.5, 10],
    "pixel_size_A": [0.15, 0.1875, 0.225, 0.2625, 0.3],
}
OPTICS_KEYS = ("energy_eV", "defocus_A", "cs_A", "c5_A", "focal_spread_A", "astigmatism_A",
               "astigmatism_angle_rad", "aperture_mrad", "angular_spread_mrad")


def _inside(table: dict, lo: float, hi_x: float, hi_y: float) -> np.ndarray:
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    return (x >= lo) & (x <= hi_x) & (y >= lo) & (y <= hi_y)


def _subset(table: dict, mask: np.ndarray) -> dict:
    return {k: np.asarray(v)[mask] for k, v in table.items()}


def prefilter(counts: np.ndarray, method: str, pixel_size_A: float, dose: float) -> np.ndarray:
    """Optional denoising before a method sees the frame ('none', 'gaussian', 'nlmeans')."""
    if method == "none":
        return counts
    from atom3d.evaluation.baseline import denoise

    electrons = dose * pixel_size_A**2
    return denoise(counts / electrons, pixel_size_A, method, 0.3, dose) * electrons


def network_method(model, device: str = "cpu", batch_size: int = 8,
                   denoise: str = "none", tta: bool | int = False) -> tuple[Callable, dict]:
    """A callable ``(counts, params) -> {species: table}`` running the model like predict
    (``tta``: passes of test-time augmentation, as ``atom3d predict --tta``). ``model``:
    a model name or directory, or an artifact already loaded (it stays on its device)."""
    from atom3d.inference.predictor import Predictor
    from atom3d.models.artifact import ModelArtifact, load_artifact

    artifact = model if isinstance(model, ModelArtifact) else load_artifact(model, device=device)
    pred = Predictor(artifact, device=device, batch_size=batch_size, tta=tta)

    def run(counts, params):
        frame = prefilter(counts, denoise, params["pixel_size_A"], params["dose_e_per_A2"])
        fp = pred.predict(frame, params["pixel_size_A"])
        return {sp: {"x": fp.columns[sp].x_A, "y": fp.columns[sp].y_A,
                     "depth": fp.columns[sp].depth, "confidence": fp.columns[sp].confidence}
                for sp in SPECIES}

    label = str(artifact.path or artifact.name) if model is artifact else str(model)
    info = {"model": label, "model_sha256": artifact.config.get("weights_sha256"),
            "temperature": pred.artifact.temperature, "denoise": denoise,
            "tta_passes": pred.tta_passes,
            "calibration_passes": pred.artifact.calibration_passes}
    return run, info


class BaselineCache:
    """Per-image baseline columns on disk (see the module docstring).

    Parameters
    ----------
    directory : path, optional
        Where entries live; default ``$ATOM3D_CACHE_DIR/baseline`` or
        ``~/.cache/atom3d/baseline``.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        if directory is None:
            root = os.environ.get("ATOM3D_CACHE_DIR") or Path.home() / ".cache" / "atom3d"
            directory = Path(root) / "baseline"
        self.directory = Path(directory)
        self.code = _baseline_code_hash()

    def key(self, clean: np.ndarray, params: dict, noise_seed: int, index: int,
            denoise: str, max_depth: int) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(clean, np.float32).tobytes())
        h.update(json.dumps({"params": {k: float(v) for k, v in sorted(params.items())},
                             "noise_seed": int(noise_seed), "index": int(index),
                             "denoise": denoise, "max_depth": int(max_depth),
                             "code": self.code}, sort_keys=True).encode())
        return h.hexdigest()

    def load(self, key: str) -> tuple[dict, float] | None:
        path = self.directory / f"{key}.npz"
        try:
            with np.load(path) as z:
                tables = {sp: {f: z[f"{sp}_{f}"] for f in ("x", "y", "depth", "confidence")}
                          for sp in SPECIES}
                return tables, float(z["seconds"])
        except (OSError, KeyError, ValueError):
            return None

    def save(self, key: str, tables: dict, seconds: float) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".{key}.{os.getpid()}.tmp.npz"
            np.savez(tmp, seconds=seconds, **{f"{sp}_{f}": np.asarray(tables[sp][f])
                                              for sp in SPECIES
                                              for f in ("x", "y", "depth", "confidence")})
            os.replace(tmp, self.directory / f"{key}.npz")
        except OSError:  # a read-only home: evaluate without caching
            pass


def _baseline_code_hash() -> str:
    """SHA-256 of the atom3d sources that determine the baseline's columns."""
    import atom3d.data.noise
    import atom3d.evaluation.baseline
    import atom3d.simulation.library
    import atom3d.simulation.optics

    h = hashlib.sha256()
    for module in (atom3d.evaluation.baseline, atom3d.simulation.library,
                   atom3d.simulation.optics, atom3d.data.noise):
        h.update(Path(module.__file__).read_bytes())
    h.update(np.__version__.encode())
    return h.hexdigest()


def baseline_method(denoise: str = "gaussian", max_depth: int = 22) -> tuple[Callable, dict]:
    """The classical baseline with oracle optics (needs the ``simulate`` extra)."""
    try:
        from atom3d.simulation.library import contrast_library, thickness_series
        from atom3d.simulation.optics import Optics
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UserError(f"--baseline needs the simulate extra (pip install 'atom3d[simulate]'): {exc}") from None
    from atom3d.evaluation.baseline import BaselineConfig, run_baseline

    cfg = BaselineConfig(denoise=denoise)

    def run(counts, params):
        series = thickness_series(max_depth, float(params["energy_eV"]))
        optics = Optics(**{k: float(params[k]) for k in OPTICS_KEYS})
        lib = contrast_library(series, optics, float(params["pixel_size_A"]))
        return run_baseline(counts, float(params["pixel_size_A"]), float(params["dose_e_per_A2"]),
                            lib, cfg)

    run.cache_key = {"denoise": denoise, "max_depth": int(max_depth)}  # type: ignore[attr-defined]
    return run, {"method": "intensity matching with oracle optics", "denoise": denoise}


@dataclass(frozen=True)
class EvaluationImage:
    """One image of a store as :func:`evaluate_store` scores it."""

    params: dict  # the image's row of ``params``, by name
    clean: np.ndarray  # noise-free image (vacuum = 1)
    counts: np.ndarray  # with shot noise of seed ``[noise_seed, index]``
    truth: dict  # the structure's true columns (:func:`structure_columns`)
    truth_inside: np.ndarray  # which of them lie in the scored area
    edge_A: float
    hi_x: float
    hi_y: float

    def inside(self, table: dict) -> np.ndarray:
        """Which columns of ``table`` (x, y [Å]) lie in the scored area."""
        return _inside(table, self.edge_A, self.hi_x, self.hi_y)


def evaluation_image(root, index: int, names: list[str], noise_seed: int,
                     edge_A: float) -> EvaluationImage:
    """Image ``index`` of the store ``root`` with its noise and truth, as evaluated:
    columns within ``edge_A`` of the border are not scored."""
    params = dict(zip(names, np.asarray(root["params"][index], float), strict=True))
    clean = np.asarray(root["image"][index])
    p = params["pixel_size_A"]
    counts = add_shot_noise(clean, params["dose_e_per_A2"], p,
                            np.random.default_rng([noise_seed, int(index)]))
    truth = structure_columns(root, int(params["structure_index"]))
    h, w = clean.shape
    hi_x, hi_y = (w - 1) * p - edge_A, (h - 1) * p - edge_A
    return EvaluationImage(params, clean, counts, truth, _inside(truth, edge_A, hi_x, hi_y),
                           edge_A, hi_x, hi_y)


def evaluate_store(data: str | Path, methods: dict[str, Callable], *, noise_seed: int = 12345,
                   edge_A: float = 1.0, limit: int | None = None,
                   progress: bool = True, cache: BaselineCache | None = None) -> dict:
    """Run every method on every image of ``data``; per-image results and aggregates.

    Methods with a ``cache_key`` attribute (the baseline) are looked up in ``cache``
    first; their ``seconds`` are those of the run that computed them.
    """
    from tqdm.auto import tqdm

    root = open_store(data)
    attrs = root.attrs
    names = list(attrs["param_names"])
    done = np.asarray(root["done"][:], bool)
    per, n_images = int(attrs["images_per_structure"]), int(attrs["n_images"])
    indices = [i for s in np.flatnonzero(done) for i in range(s * per, min((s + 1) * per, n_images))]
    if not indices:
        raise UserError(f"dataset {data} has no finished structure")
    if limit:
        indices = indices[:limit]
    k_max = int(attrs["max_depth"])
    per_image = {m: {sp: [] for sp in SPECIES} for m in methods}
    params_rows, kinds = [], []
    kind_names = list(attrs.get("structure_param_names", []))
    structure_kind = (np.asarray(root["structure_params"][:, kind_names.index("kind")], float)
                      if "kind" in kind_names else None)
    seconds = {m: 0.0 for m in methods}
    for i in tqdm(indices, desc="evaluate", unit="image", disable=not progress):
        im = evaluation_image(root, i, names, noise_seed, edge_A)
        params, clean, counts, truth_all = im.params, im.clean, im.counts, im.truth
        s = int(params["structure_index"])
        truth = {}
        for code, sp in enumerate(SPECIES):
            m = (truth_all["species"] == code) & im.truth_inside
            truth[sp] = {"x": truth_all["x"][m], "y": truth_all["y"][m], "depth": truth_all["depth"][m]}
        params_rows.append(params)
        kind = structure_kind[s] if structure_kind is not None else np.nan
        kinds.append(STRUCTURE_KINDS[int(kind)] if np.isfinite(kind) else None)
        for name, run in methods.items():
            cached, key = None, None
            if cache is not None and hasattr(run, "cache_key"):
                key = cache.key(clean, params, noise_seed, i, **run.cache_key)
                cached = cache.load(key)
            if cached is None:
                t0 = time.perf_counter()
                pred = run(counts, params)
                spent = time.perf_counter() - t0
                if key is not None:
                    cache.save(key, pred, spent)
            else:
                pred, spent = cached
            seconds[name] += spent
            for sp in SPECIES:
                pt = _subset(pred[sp], im.inside(pred[sp]))
                per_image[name][sp].append(column_metrics(pt, truth[sp], MATCH_A[sp]))
    return {"indices": indices, "params": params_rows, "per_image": per_image,
            "seconds": seconds, "max_depth": k_max, "structure_kinds": kinds}


def _clean(obj):
    """JSON-safe: NaN → None, NumPy → Python, arrays dropped (only figures are kept)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not isinstance(v, np.ndarray)}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return None if not np.isfinite(obj) else float(obj)
    return obj


def summarise(run: dict) -> dict:
    """metrics.json content: per method and species, overall, by dose and by parameter."""
    params = run["params"]
    out: dict = {}
    for method, per_sp in run["per_image"].items():
        out[method] = {"seconds_per_image": run["seconds"][method] / max(len(params), 1)}
        for sp, results in per_sp.items():
            agg = aggregate(results)
            entry = {"overall": agg}
            for key, edges in BREAKDOWNS.items():
                values = np.array([pr[key] for pr in params], float)
                entry[f"by_{key}"] = breakdown(results, values, edges)
            dose = np.array([pr["dose_e_per_A2"] for pr in params])
            for lo in (1000, 10000):
                sel = [r for r, d in zip(results, dose, strict=True) if d >= lo]
                entry[f"dose_ge_{lo}"] = aggregate(sel) if sel else None
            # isolated particles and crystals with a surface in profile, at every dose and
            # at doses >= 1000 e/Å² (stores written before the kind was recorded: none)
            kinds = run.get("structure_kinds") or [None] * len(results)
            entry["by_structure_kind"] = {
                kind: {"all": aggregate([r for r, k in zip(results, kinds, strict=True)
                                         if k == kind]),
                       "dose_ge_1000": aggregate([r for r, k, d in zip(results, kinds, dose,
                                                                        strict=True)
                                                  if k == kind and d >= 1000])}
                for kind in STRUCTURE_KINDS if kind in kinds}
            td = agg.get("true_depth", np.zeros(0))
            pdp = agg.get("pred_depth", np.zeros(0))
            entry["confusion_matrix"] = confusion_matrix(td, pdp, run["max_depth"]).tolist() \
                if len(td) else []
            out[method][sp] = entry
    return out


def main_evaluate(data: str | Path, out_dir: str | Path, *, model: str = "ceo2-110",
                  baseline: bool = False, denoise: tuple[str, ...] = ("none",),
                  baseline_denoise: tuple[str, ...] = ("gaussian",), device: str = "cpu",
                  batch_size: int = 8, limit: int | None = None, noise_seed: int = 12345,
                  progress: bool = True, baseline_cache: str | Path | None | bool = None,
                  tta: bool | int = False) -> dict:
    """Evaluate and write ``out_dir/metrics.json`` and the plots; returns the summary."""
    from atom3d.evaluation.report import write_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = open_store(data)
    methods: dict[str, Callable] = {}
    info: dict[str, dict] = {}
    for d in denoise:
        name = "network" if d == "none" else f"network+{d}"
        methods[name], info[name] = network_method(model, device, batch_size, d, tta)
    if baseline:
        for d in baseline_denoise:
            name = "baseline" if d == "gaussian" else f"baseline+{d}"
            methods[name], info[name] = baseline_method(d, int(root.attrs["max_depth"]))
    # only with --baseline: the cache's key hashes the simulation code (the simulate extra)
    cache = (BaselineCache(baseline_cache or None)
             if baseline and baseline_cache is not False else None)
    run = evaluate_store(data, methods, noise_seed=noise_seed, limit=limit, progress=progress,
                         cache=cache)
    summary = summarise(run)
    doc = {"data": str(data), "n_images": len(run["indices"]), "noise_seed": noise_seed,
           "match_distance_A": MATCH_A, "methods": info, "results": summary}
    (out_dir / "metrics.json").write_text(json.dumps(_clean(doc), indent=1))
    (out_dir / "dose_table.md").write_text(dose_table(doc) + "\n\n" + kind_table(doc) + "\n")
    write_plots(summary, run, out_dir)
    return doc


def _fmt(v: float | None) -> str:
    """A table cell: three decimals, "–" for a missing or NaN figure."""
    return "–" if v is None or v != v else f"{v:.3f}"


def dose_table(doc: dict, doses: tuple[int, ...] = (100, 300, 1000, 3000, 10000)) -> str:
    """Markdown table of the headline figures per method in the dose bins of ``doses``.

    Each row is one dose bin of ``metrics.json`` (``by_dose_e_per_A2``; bins are centred
    on 100, 300, 1000, 3000, 10 000 e/Å² in log scale), with its range and number of
    images. Ce: detection F1, exact and within-±1 depth accuracy, ECE; O: F1 and exact.
    """
    f = _fmt
    lines = [
        "| method | dose [e/Å²] (bin) | images | Ce F1 | Ce exact | Ce ±1 | Ce ECE | O F1 | O exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, res in doc["results"].items():
        for dose in doses:
            ce = _dose_bin(res["Ce"]["by_dose_e_per_A2"], dose)
            o = _dose_bin(res["O"]["by_dose_e_per_A2"], dose)
            if ce is None or o is None:
                continue
            lines.append(
                f"| {method} | {dose} ({ce['lo']:.0f}–{ce['hi']:.0f}) | {ce['n_images']} | "
                f"{f(ce['f1'])} | {f(ce['exact'])} | {f(ce['within1'])} | {f(ce['ece'])} | "
                f"{f(o['f1'])} | {f(o['exact'])} |")
    return "\n".join(lines)


def kind_table(doc: dict) -> str:
    """Markdown table of the headline figures per method and structure kind (isolated
    particles, crystals with a surface in profile), at doses >= 1000 e/Å² (``metrics.json``:
    ``by_structure_kind``)."""
    f = _fmt
    lines = [
        "| method | structure kind (dose ≥ 1000 e/Å²) | images | Ce F1 | Ce exact | Ce ±1 "
        "| Ce MAE | Ce ECE | O F1 | O exact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, res in doc["results"].items():
        for kind, ce in res["Ce"].get("by_structure_kind", {}).items():
            ce, o = ce["dose_ge_1000"], res["O"]["by_structure_kind"][kind]["dose_ge_1000"]
            lines.append(
                f"| {method} | {kind.replace('_', ' ')} | {ce['n_images']} | {f(ce['f1'])} | "
                f"{f(ce['exact'])} | {f(ce['within1'])} | {f(ce['mae'])} | {f(ce['ece'])} | "
                f"{f(o['f1'])} | {f(o['exact'])} |")
    return "\n".join(lines)


def _dose_bin(bins: list[dict], dose: float) -> dict | None:
    """The bin of ``bins`` (dicts with ``lo``, ``hi``) that holds ``dose``."""
    for b in bins:
        if b["lo"] <= dose < b["hi"]:
            return b
    return None
