"""Simulation throughput on this machine; the last line printed is one JSON object.

    images_per_multislice        labelled images per exit-wave computation (default config)
    images_per_cpu_second        with reuse (default config), one worker
    images_per_cpu_second_no_reuse   one image per exit wave (images_per_structure = 1)
    scaling_2_workers            throughput with 2 local workers ÷ with 1, same structures

Usage: python benchmarks/simulate.py [--config configs/simulate/ceo2_110.yaml] [--structures 4]
Takes about 9 minutes with the default config (8 structures) on 2 free cores.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from atom3d.simulation.campaign import load_campaign_config, run_campaign

REPO = Path(__file__).resolve().parents[1]


def timed(cfg, n_images, workers, seed):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(cfg, n_images=n_images)
        t = time.perf_counter()
        run_campaign(cfg, Path(tmp) / "b.zarr", seed=seed, workers=workers, progress=False)
        return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs/simulate/ceo2_110.yaml"))
    ap.add_argument("--structures", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)
    cfg = load_campaign_config(args.config)
    per = cfg.images_per_structure
    n = args.structures * per
    t1 = timed(cfg, n, 1, args.seed)
    print(json.dumps({"workers": 1, "images": n, "seconds": t1}), flush=True)
    t2 = timed(cfg, n, 2, args.seed)
    print(json.dumps({"workers": 2, "images": n, "seconds": t2}), flush=True)
    no_reuse = dataclasses.replace(cfg, images_per_structure=1)
    n0 = max(2, args.structures // 2)
    t0 = timed(no_reuse, n0, 1, args.seed)
    print(json.dumps({"workers": 1, "images": n0, "images_per_structure": 1, "seconds": t0}), flush=True)
    result = {
        "config": os.path.relpath(args.config, REPO),
        "structures": args.structures,
        "images_per_multislice": per,
        "images_per_cpu_second": n / t1,
        "images_per_cpu_second_no_reuse": n0 / t0,
        "reuse_speedup": (n / t1) / (n0 / t0),
        "scaling_2_workers": t1 / t2,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
