"""A simulation campaign: one lazy dask graph of structure tasks, written into a zarr store.

Each task draws one structure (seeded by ``SeedSequence([seed, structure_index])``, so the
result does not depend on the number of workers or their order), computes its multislice
exit waves once, forms ``images_per_structure`` noise-free images for independent optics
draws, and writes them, the labels and the column table into the store, marking the
structure ``done`` last. ``resume=True`` skips structures already done, so a killed run
finishes into the same store an uninterrupted run writes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atom3d.config import load_config, to_dict
from atom3d.errors import ConfigError, UserError
from atom3d.simulation.hrtem import (
    DetectorConfig,
    MultisliceConfig,
    exit_spectra,
    image_from_spectra,
    make_grid,
)
from atom3d.simulation.labels import (
    LabelConfig,
    class_mass,
    column_targets,
    dequantise_amplitude,
    quantise_amplitude,
    weight_map,
)
from atom3d.simulation.optics import OpticsConfig, draw_optics, transfer_cutoff
from atom3d.structures.generate import (
    STRUCTURE_PARAMS,
    DefectConfig,
    StructureConfig,
    record_vector,
    sample_structure,
)


@dataclass(frozen=True)
class CampaignConfig:
    """Everything that defines a dataset (with the seed and the number of images).

    Parameters
    ----------
    n_images
        Number of labelled images (overridden by ``atom3d simulate --n``).
    images_per_structure
        Optics/dose draws per multislice exit wave (reuse factor).
    """

    n_images: int = 1000
    images_per_structure: int = 16
    structure: StructureConfig = field(default_factory=StructureConfig)
    defects: DefectConfig = field(default_factory=DefectConfig)
    optics: OpticsConfig = field(default_factory=OpticsConfig)
    multislice: MultisliceConfig = field(default_factory=MultisliceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)

    def __post_init__(self):
        if self.n_images < 1:
            raise ValueError("n_images must be >= 1")
        if not 1 <= self.images_per_structure <= 1024:
            raise ValueError("images_per_structure must be within 1 … 1024")
        if self.structure.max_depth() > self.labels.max_depth:
            raise ValueError(
                f"structures can reach {self.structure.max_depth()} atoms per column but "
                f"labels.max_depth is {self.labels.max_depth}")


def load_campaign_config(source) -> CampaignConfig:
    return load_config(CampaignConfig, source)


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS")


def _worker_init() -> None:
    """Pin a fresh worker process to one thread, before numba or BLAS start theirs."""
    for var in _THREAD_VARS:
        os.environ[var] = "1"


def configure_abtem() -> None:
    """abTEM settings every atom3d simulation uses: deterministic FFT plans, one thread."""
    import abtem

    # FFTW_ESTIMATE plans are deterministic (FFTW_MEASURE may pick different algorithms
    # from run to run, and so change the last bits of the results).
    abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE", "fftw.threads": 1,
                      "diagnostics.progress_bar": False, "device": "cpu"})


def simulate_structure(store_path: str, s: int) -> float:
    """Compute and write structure ``s`` of the store; returns the seconds it took."""
    import zarr

    from atom3d.data.store import MAX_COLUMNS, PARAM_NAMES, images_of_structure

    configure_abtem()
    t0 = time.perf_counter()
    root = zarr.open_group(store_path, mode="r+")
    attrs = root.attrs
    cfg = load_campaign_config(attrs["config"])
    rng = np.random.default_rng(np.random.SeedSequence([int(attrs["seed"]), int(s)]))
    det, ms, lab = cfg.detector, cfg.multislice, cfg.labels
    pixel = float(rng.uniform(*det.pixel_size_A))
    fov = det.image_px * pixel
    st = sample_structure(cfg.structure, cfg.defects, rng, fov)
    if len(st.column_depth) > MAX_COLUMNS:
        raise ValueError(f"structure {s} has {len(st.column_depth)} columns (> {MAX_COLUMNS})")
    if st.column_depth.size and st.column_depth.max() > lab.max_depth:
        raise ValueError(f"structure {s} has a column deeper than labels.max_depth")
    grid = make_grid(pixel, det.image_px, ms)
    energy = cfg.optics.energy_keV * 1e3
    spectra = exit_spectra(st, grid, ms, energy, transfer_cutoff(cfg.optics),
                           seed=int(rng.integers(2**31)))
    # Labels (shared by all images of the structure).
    shape = (det.image_px, det.image_px)
    cls = np.zeros((2,) + shape, np.uint8)
    amp = np.zeros((2,) + shape, np.float32)
    for sp in (0, 1):
        sel = st.column_species == sp
        cls[sp], amp[sp] = column_targets(st.column_xy[sel], st.column_depth[sel], shape,
                                          pixel, lab.sigma_A)
    amp_q = quantise_amplitude(amp)
    amp = dequantise_amplitude(amp_q)  # the targets training will see
    weights = np.stack([weight_map(a, lab.core_weight, lab.rim_weight) for a in amp])
    mass = np.stack([class_mass(cls[sp], amp[sp], lab.max_depth + 1) for sp in (0, 1)])
    # Images.
    rec = st.record
    n_images = int(attrs["n_images"])
    for i in images_of_structure(s, n_images, int(attrs["images_per_structure"])):
        optics = draw_optics(cfg.optics, rng)
        dose = float(np.exp(rng.uniform(*np.log(det.dose_e_per_A2))))
        img = image_from_spectra(spectra, optics, focal_nodes=cfg.optics.focal_nodes,
                                 mtf_cutoff_nyquist=det.mtf_cutoff_nyquist)
        values = dict(optics.as_dict(), structure_index=s, pixel_size_A=pixel,
                      dose_e_per_A2=dose, tilt_mrad=rec["tilt_mrad"],
                      thickness_A=rec["thickness_A"], max_ce_depth=rec["max_ce_depth"],
                      max_o_depth=rec["max_o_depth"])
        root["image"][i] = img
        root["params"][i] = np.array([values[k] for k in PARAM_NAMES], np.float64)
    n = len(st.column_depth)
    xy = np.full((MAX_COLUMNS, 2), np.nan, np.float32)
    xy[:n] = st.column_xy
    spc = np.full(MAX_COLUMNS, 255, np.uint8)
    spc[:n] = st.column_species
    dep = np.zeros(MAX_COLUMNS, np.uint8)
    dep[:n] = st.column_depth
    root["label_class"][s] = cls
    root["label_amp"][s] = amp_q
    root["label_weight"][s] = weights.astype(np.float16)
    root["class_mass"][s] = mass
    root["columns_xy"][s] = xy
    root["columns_species"][s] = spc
    root["columns_depth"][s] = dep
    root["n_columns"][s] = n
    root["structure_params"][s] = record_vector(rec)
    root["done"][s] = True
    return time.perf_counter() - t0


def _finalize(root) -> None:
    from atom3d.data.store import class_frequencies

    root.attrs.update({"class_frequencies": class_frequencies(root), "complete": True})


def prepare_store(out: Path, cfg: CampaignConfig, *, seed: int, resume: bool):
    """Create the store, or reopen it for ``resume`` after checking it matches."""
    from atom3d.data.store import create_store, open_store

    cfg_dict = to_dict(cfg)
    if out.exists():
        if not resume:
            raise UserError(f"{out} already exists; pass --resume to finish it, or choose another --out")
        root = open_store(out, mode="r+")
        if root.attrs["config"] != cfg_dict or int(root.attrs["seed"]) != seed:
            raise ConfigError(f"{out} was made with a different config, --n or --seed; "
                              "resume it with the same ones, or choose another --out")
        return root
    if out.suffix != ".zarr":
        raise UserError(f"--out must end in .zarr, got {out}")
    if not out.parent.exists():
        raise UserError(f"the folder of --out does not exist: {out.parent}")
    root = create_store(out, config=cfg_dict, seed=seed, n_images=cfg.n_images,
                        images_per_structure=cfg.images_per_structure,
                        image_px=cfg.detector.image_px, max_depth=cfg.labels.max_depth,
                        structure_param_names=STRUCTURE_PARAMS)
    return root


def run_campaign(cfg: CampaignConfig, out: str | Path, *, seed: int, workers: int = 1,
                 scheduler: str | None = None, resume: bool = False,
                 progress: bool = True) -> dict:
    """Simulate the whole dataset into ``out`` (a ``.zarr`` directory).

    Parameters
    ----------
    workers
        Local worker processes (ignored with ``scheduler``).
    scheduler
        Address of an existing Dask scheduler (``tcp://host:8786``).
    """
    import dask
    from tqdm.auto import tqdm

    out = Path(out)
    root = prepare_store(out, cfg, seed=seed, resume=resume)
    done = np.asarray(root["done"][:])
    todo = [int(s) for s in np.flatnonzero(~done)]
    tasks = [dask.delayed(simulate_structure, pure=True)(str(out), s,
                                                          dask_key_name=f"structure-{s}")
             for s in todo]
    bar = tqdm(total=len(done), initial=int(done.sum()), unit="structure",
               desc="simulate", disable=not progress, dynamic_ncols=True)
    seconds: list[float] = []
    t0 = time.perf_counter()
    try:
        if scheduler:
            from distributed import Client, as_completed

            with Client(scheduler) as client:
                futures = client.compute(tasks)
                for fut in as_completed(futures):
                    seconds.append(fut.result())
                    bar.update(1)
        elif workers <= 1:
            for task in tasks:
                seconds.append(task.compute(scheduler="synchronous"))
                bar.update(1)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            from dask.callbacks import Callback

            class _Bar(Callback):
                def _posttask(self, key, result, dsk, state, worker_id):
                    if isinstance(key, str) and key.startswith("structure-"):
                        seconds.append(result)
                        bar.update(1)

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                     initializer=_worker_init) as pool, _Bar():
                dask.compute(*tasks, scheduler=pool)
    finally:
        bar.close()
    _finalize(root)
    return {"structures": len(done), "computed": len(todo),
            "seconds": time.perf_counter() - t0,
            "structure_seconds": float(np.sum(seconds)) if seconds else 0.0}
