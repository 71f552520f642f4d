"""Convergence of the multislice sampling and slice thickness (recorded in results.json).

A thick CeO2 [110] crystal (20 Ce atoms per column, 76.5 Å) with one frozen-phonon
configuration (same seed everywhere) is imaged with typical optics, at several wave
samplings and slice thicknesses; each image is compared with a reference computed at
half the finest tested sampling (and half the slice thickness). Figure of merit:

    rel_rms = rms(I - I_ref) / std(I_ref)      (RMS difference relative to the contrast)

also reported relative to the mean intensity (rms(I - I_ref) / mean(I_ref)).
Run:  python simulate/convergence/run_convergence.py  (about 10 min on 2 cores)
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from atom3d.simulation.hrtem import MultisliceConfig, exit_spectra, image_from_spectra, make_grid
from atom3d.simulation.optics import Optics, OpticsConfig, transfer_cutoff
from atom3d.structures.ceria import lattice_sites
from atom3d.structures.columns import place
from atom3d.structures.shapes import profile_mask


def structure():
    rng = np.random.default_rng(5)
    sites = lattice_sites((1, 1, 0), (30.0, 30.0, 80.0))
    mask, rec = profile_mask(sites, rng, thickness_layers=20, wedge_layers=0, width_A=40.0,
                             surface="110", profile="flat")
    return place(sites, mask, rotation_rad=0.0, tilt_rad=0.0, tilt_azimuth_rad=0.0,
                 centre_xy_A=(12.8, 4.0), record=rec)


def image(st, sampling, slice_A, optics, k_cut):
    ms = MultisliceConfig(sampling_A=sampling, slice_thickness_A=slice_A, frozen_phonons=1,
                          ctf_margin_A=12.0)
    g = make_grid(0.2, 128, ms)
    sp = exit_spectra(st, g, ms, optics.energy_eV, k_cut, seed=3)
    return image_from_spectra(sp, optics, focal_nodes=7)


def main():
    out = Path(__file__).with_name("results.json")
    st = structure()
    cfg = OpticsConfig()
    k_cut = transfer_cutoff(cfg)
    optics_set = {
        "ncsi": Optics(300e3, -60.0, -15e4, 2.5e7, 20.0, 0.0, 0.0, np.inf, 0.1),
        "positive_cs": Optics(300e3, 40.0, 3e4, 1e7, 30.0, 10.0, 0.5, 25.0, 0.2),
    }
    ref_sampling, ref_slice = 0.0175, 0.478
    rows = []
    for name, optics in optics_set.items():
        t = time.time()
        ref = image(st, ref_sampling, ref_slice, optics, k_cut)
        t_ref = time.time() - t
        for sampling in (0.1, 0.07, 0.05, 0.035):
            for slice_A in (1.913, 0.9565):
                t = time.time()
                img = image(st, sampling, slice_A, optics, k_cut)
                d = img - ref
                rows.append({"optics": name, "sampling_A": sampling, "slice_thickness_A": slice_A,
                             "rel_rms_contrast": float(np.sqrt(np.mean(d**2)) / ref.std()),
                             "rel_rms_mean": float(np.sqrt(np.mean(d**2)) / ref.mean()),
                             "seconds": time.time() - t})
                print(json.dumps(rows[-1]), flush=True)
        rows.append({"optics": name, "reference_sampling_A": ref_sampling,
                     "reference_slice_thickness_A": ref_slice, "seconds": t_ref,
                     "ref_contrast_std": float(ref.std()), "ref_mean": float(ref.mean())})
    result = {"structure": "CeO2 [110], 20 Ce atoms per column (76.5 Å), 1 frozen phonon",
              "metric": "rms(I - I_ref)/std(I_ref) and /mean(I_ref); pixel 0.2 Å, 128 px",
              "k_cut_per_A": k_cut, "rows": rows}
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    sys.exit(main())
