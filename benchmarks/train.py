"""Training throughput of the default training config; the last line is one JSON object.

    step_seconds_real_loader   mean optimisation step time with the real DataLoader
                               (zarr reads, on-the-fly noise, resampling, labels, crops)
    step_seconds_in_memory     the same steps on batches already in memory (the two kinds
                               alternate step by step, so drifts of the machine's speed cancel;
                               with data worker processes, a worker's prefetching also
                               overlaps the in-memory steps)
    loader_overhead            their ratio (target <= 1.1: the data pipeline keeps up)
    samples_per_second         training crops per second with the real loader

The real loader is measured in the steady state of a training run: one pass over the
training set first fills the worker's image cache (``data.cache_images``), as the first
epoch of every run does (``--cold`` skips it and measures a first epoch).

Usage: python benchmarks/train.py --data data/train.zarr [--config configs/train/ceo2_110.yaml]
       [--steps 40] [--warmup 3] [--cold]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from atom3d.data.datamodule import ColumnDataModule
from atom3d.training.task import ColumnSegmentationTask

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", default=str(REPO / "configs/train/ceo2_110.yaml"))
    ap.add_argument("--steps", type=int, default=40,
                    help="steps of each kind (real loader, in memory), alternating")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cold", action="store_true",
                    help="do not fill the image cache first (measure a first epoch)")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    data_cfg = dict(cfg.get("data", {}), path=args.data, persistent_workers=True)
    model_cfg = dict(cfg.get("model", {}))
    data_cfg["size_multiple"] = 2 ** int(model_cfg.get("depth", 4))
    dm = ColumnDataModule(**data_cfg)
    task = ColumnSegmentationTask(max_depth=dm.max_depth, class_frequencies=dm.class_frequencies,
                                  **model_cfg)
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    task.train()

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss, _ = task.losses(batch, task(batch["image"]))
        loss.backward()
        opt.step()

    loader = dm.train_dataloader()
    warm = bool(data_cfg.get("cache_images")) and not args.cold
    if warm:  # the worker persists, and with it the images it has read
        t = time.perf_counter()
        for _ in loader:
            pass
        print(f"image cache filled in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    batches = []
    for _ in range(args.warmup):
        b = next_batch()
        step(b)
        batches.append(b)
    # Real-loader and in-memory steps alternate, so that a change of the machine's speed
    # during the run (shared hosts) affects both alike and cancels in the ratio.
    real_times, mem_times = [], []
    n = 0
    for k in range(args.steps):
        t = time.perf_counter()
        b = next_batch()
        step(b)
        real_times.append(time.perf_counter() - t)
        n += b["image"].shape[0]
        if len(batches) < 8:
            batches.append(b)
        t = time.perf_counter()
        step(batches[k % len(batches)])
        mem_times.append(time.perf_counter() - t)
    real = float(np.mean(real_times))
    mem = float(np.mean(mem_times))
    result = {"config": str(Path(args.config).relative_to(REPO)) if Path(args.config).is_relative_to(REPO) else args.config,
              "batch_size": data_cfg.get("batch_size"), "crop_px": data_cfg.get("crop_px"),
              "num_workers": data_cfg.get("num_workers"), "torch_threads": torch.get_num_threads(),
              "steps": args.steps, "image_cache_warm": warm, "step_seconds_real_loader": real,
              "step_seconds_in_memory": mem, "loader_overhead": real / mem,
              "samples_per_second": n / (real * args.steps)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
