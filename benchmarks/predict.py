"""Benchmark ``atom3d predict``: end-to-end throughput, bare network throughput, peak memory.

Writes a synthetic series (a CeO2-like particle of Gaussian columns on the projected [110]
Ce/O lattice, drifting, with Poisson noise at 1000 e/Å²; ``--size`` px square at
``--pixel`` Å/px) as an ImageJ TIFF (or ``--format npy``: a memory-mapped ``.npy``) into a
temporary directory, ``--frames`` frames long (and a second, longer one when a memory run
needs more frames), then measures

``frames_per_second``
    the whole ``atom3d predict`` pipeline (read, resample, normalise, tiled network,
    columns, maps, HDF5 writing, tracking, smoothing, events, finalise) on ``--frames``
    frames, in a subprocess;
``forward_frames_per_second``
    the bare network (``model(x)`` under ``torch.no_grad``, its activations from the
    heap as in ``atom3d predict``: ``network_allocations``) on the same number of tiles per
    frame, in the same batches, in this process, timed before and after the end-to-end
    run (the mean time per frame of the two);
``overhead``
    ``1 - frames_per_second / forward_frames_per_second``: the share of time spent
    outside the network; ``overhead_in_run`` is the same share measured inside the
    end-to-end run (time in the network's forward passes (logits only), over the
    run's time), which is immune to the load on shared machines changing between the two
    measurements;
``rss_mb_100``, ``rss_mb_1000``
    peak resident memory [MB] of a subprocess predicting 100 and 1000 frames (its own
    ``VmHWM``); ``rss_frame_loop_mb_*`` is the peak before post-processing (tracking,
    smoothing). Neither must grow with the series length: the frame loop streams, and
    post-processing reads and writes the results file one frame at a time.

``--tta-passes N`` (default 1, i.e. ``atom3d predict --no-tta``) runs N network passes
per frame in both measurements (``atom3d predict`` defaults to 8, ``--tta``): the
overhead outside the network is the same work, so its share shrinks N-fold.

The model is ``--model`` (default: the packaged ``ceo2-110``); when the default is absent a
random-weight UNet of the default architecture (base_width 32, depth 4, 20 depth classes
per species, 0.2 Å/px) is used and the JSON says ``"model": "random-init"``. The memory runs
use the same model unless ``--rss-model tiny`` (a base_width 8, depth 2 network: the
1000-frame run takes 6 instead of 9 minutes, but its small working set hid a drift of
the shipped network's heap, +25 % from 100 to 1000 frames, until session 23; the memory
target is judged with the default).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "ceo2-110"


# --------------------------------------------------------------------------- data


def write_series(path: Path, n_frames: int, size: int, pixel_A: float, seed: int = 0) -> Path:
    """A drifting particle of Gaussian columns with shot noise, as a (T, size, size) .npy."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:size, :size].astype(np.float64)
    x, y = c * pixel_A, r * pixel_A
    centre = size * pixel_A / 2
    radius = 0.4 * size * pixel_A
    clean = np.ones((size, size))
    n = int(size * pixel_A / 1.9) + 2
    sigma = 0.4
    columns = []  # (x, y, amplitude): Ce at (2.705 i, 1.913 j), i + j even; O beside
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            if (i + j) % 2 == 0:
                columns.append((centre + 2.705 * i, centre + 1.913 * j, 1.5))
            columns.append((centre + 2.705 * i + 1.353, centre + 1.913 * j, 0.4))
    for cx, cy, amp in columns:
        if (cx - centre) ** 2 + (cy - centre) ** 2 > radius**2:
            continue
        lo_r, hi_r = int((cy - 3) / pixel_A), int((cy + 3) / pixel_A) + 1
        lo_c, hi_c = int((cx - 3) / pixel_A), int((cx + 3) / pixel_A) + 1
        sl = (slice(max(lo_r, 0), min(hi_r, size)), slice(max(lo_c, 0), min(hi_c, size)))
        clean[sl] += amp * np.exp(-((x[sl] - cx) ** 2 + (y[sl] - cy) ** 2) / (2 * sigma**2))
    dose = 1000.0 * pixel_A**2
    drift = np.cumsum(rng.normal(0.02, 0.05, (n_frames, 2)), axis=0) / pixel_A

    def frames():
        for t in range(n_frames):
            frame = ndimage.shift(clean, drift[t], order=1, mode="nearest")
            yield rng.poisson(frame * dose).astype(np.float32)

    if path.suffix == ".npy":
        data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                         shape=(n_frames, size, size))
        for t, frame in enumerate(frames()):
            data[t] = frame
        data.flush()
        del data
    else:  # ImageJ hyperstack, written frame by frame; pixel size in nm
        import tifffile

        tifffile.imwrite(path, frames(), shape=(n_frames, size, size), dtype=np.float32,
                         imagej=True, resolution=(10.0 / pixel_A, 10.0 / pixel_A),
                         metadata={"axes": "TYX", "unit": "nm", "finterval": 1.0})
    return path


# --------------------------------------------------------------------------- models


def resolve_model(name: str | None, workdir: Path, kind: str = "default") -> tuple[str, str]:
    """(model argument for ``--model``, label for the JSON)."""
    from atom3d.errors import UserError
    from atom3d.models.artifact import load_artifact, save_artifact
    from atom3d.models.unet import UNet

    if kind == "default":
        try:
            artifact = load_artifact(name or DEFAULT_MODEL)
            return str(name or DEFAULT_MODEL), artifact.name
        except UserError:
            if name is not None:
                raise
        net_args, label = {"base_width": 32, "depth": 4}, "random-init"
    else:
        net_args, label = {"base_width": 8, "depth": 2}, "random-init-tiny"
    import torch

    torch.manual_seed(0)
    k = 20
    net = UNet(n_classes=(k + 1, k + 1), **net_args)
    directory = workdir / label
    save_artifact(net, directory, name=label, classes={"Ce": k, "O": k}, pixel_size_A=0.2,
                  normalization={"kind": "frame-standardise"}, training_domain={},
                  metrics={"random_init": True})
    return str(directory), label


# --------------------------------------------------------------------------- child


class _Prefix:
    """The first ``n`` frames of a series (same interface as atom3d.io.readers.Series)."""

    def __init__(self, series, n: int) -> None:
        self._series = series
        self.path = series.path
        self.n_frames = min(n, series.n_frames)
        self.shape = series.shape
        self.pixel_size_A = series.pixel_size_A
        self.frame_interval_s = series.frame_interval_s

    def frame(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n_frames:
            raise IndexError(i)
        return self._series.frame(i)


def _memory_mb() -> dict[str, float]:
    """This process's memory [MB] from /proc/self/status.

    ``VmHWM`` is the peak resident set of its own address space (it starts afresh at
    ``exec``; ``ru_maxrss`` would include the parent's high-water mark inherited through
    fork/exec). ``RssAnon`` is the current anonymous (heap) part, ``RssFile`` the current
    file-backed part (memory-mapped inputs, shared libraries), which the kernel can drop.
    """
    out = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key = line.split(":")[0]
                if key in ("VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(line.split()[1]) / 1024.0
    except OSError:
        import resource

        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def child(args: argparse.Namespace) -> int:
    """Run the predict pipeline on the first ``--n`` frames and print a JSON line."""
    import atom3d.inference.series as series_module
    from atom3d.inference.lattice import lattice_attrs, series_lattice
    from atom3d.inference.predictor import Predictor
    from atom3d.inference.series import predict_series
    from atom3d.io.readers import open_series
    from atom3d.models.artifact import load_artifact

    peaks = {}
    postprocess = series_module.postprocess

    def measured_postprocess(*a, **k):
        peaks.update(_memory_mb())  # the streaming frame loop, before post-processing
        return postprocess(*a, **k)

    series_module.postprocess = measured_postprocess
    t0 = time.perf_counter()
    predictor = Predictor(load_artifact(args.model), device=args.device,
                          batch_size=args.batch_size, tta=args.tta_passes)
    network = {"seconds": 0.0}
    forward = predictor._network

    def timed_forward(batch):  # network time inside this very run (same load)
        start = time.perf_counter()
        try:
            return forward(batch)
        finally:
            network["seconds"] += time.perf_counter() - start

    predictor._network = timed_forward
    override = args.pixel if args.series.suffix == ".npy" else None  # TIFF: calibrated
    with open_series(args.series, pixel_size_A=override) as series:
        if abs(series.pixel_size_A - args.pixel) > 1e-6 * args.pixel:
            raise RuntimeError(f"pixel size read as {series.pixel_size_A} Å, not {args.pixel}")
        t1 = time.perf_counter()
        frames = _Prefix(series, args.n)
        check = series_lattice(frames, series.pixel_size_A)  # as atom3d predict does
        t_lattice = time.perf_counter() - t1
        summary = predict_series(frames, args.out, predictor, progress=False,
                                 calibration=lattice_attrs(check, "file"))
    t2 = time.perf_counter()
    print(json.dumps({"frames": summary["n_frames"], "seconds": t2 - t1,
                      "startup_s": t1 - t0, "lattice_check_s": t_lattice,
                      "n_columns": summary["n_columns"],
                      "network_s": network["seconds"],
                      "maxrss_mb": _memory_mb().get("VmHWM"),
                      "loop_maxrss_mb": peaks.get("VmHWM"),
                      "loop_end_anon_mb": peaks.get("RssAnon"),
                      "loop_end_file_mb": peaks.get("RssFile")}))
    return 0


def run_child(script: Path, common: list[str], n: int, out: Path) -> dict:
    """Run :func:`child` in a subprocess and return its JSON result."""
    cmd = [sys.executable, str(script), "--child", "--n", str(n), "--out", str(out), *common]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    out.unlink(missing_ok=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- bare network


def forward_fps(model_arg: str, size: int, pixel_A: float, batch_size: int, device: str,
                n_frames: int, passes: int = 1) -> tuple[float, int]:
    """Frames per second of the bare network on the tiles one frame needs (``passes``
    forward passes per batch); tiles per frame."""
    import torch

    from atom3d.data.transforms import resampled_shape
    from atom3d.inference.memory import network_allocations
    from atom3d.inference.predictor import Predictor
    from atom3d.inference.tiling import tile_starts
    from atom3d.models.artifact import load_artifact

    predictor = Predictor(load_artifact(model_arg), device=device, batch_size=batch_size)
    h, w = resampled_shape((size, size), pixel_A, predictor.pixel_size_A)
    tile = predictor._tile_for((h, w))
    overlap = min(predictor.overlap, tile - 1)
    n_tiles = len(tile_starts(max(h, tile), tile, overlap)) * len(
        tile_starts(max(w, tile), tile, overlap))
    if max(h, w) <= tile:  # small frames are batched across frames
        batches = [batch_size] * (n_frames // batch_size) + (
            [n_frames % batch_size] if n_frames % batch_size else [])
        total_frames = n_frames
    else:
        per_frame = [batch_size] * (n_tiles // batch_size) + (
            [n_tiles % batch_size] if n_tiles % batch_size else [])
        batches = per_frame * n_frames
        total_frames = n_frames
    model = predictor.model
    dtype = next(model.parameters()).dtype
    x = torch.randn(batch_size, 1, tile, tile, device=predictor.device, dtype=dtype)
    with torch.no_grad(), network_allocations():  # as the predictor runs it
        model(x[:1])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            for _ in range(passes):
                model(x[:b])
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return total_frames / seconds, n_tiles


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help=f"model name or directory (default {DEFAULT_MODEL}, "
                   "else a random-init network of the default architecture)")
    p.add_argument("--frames", type=int, default=200, help="frames of the throughput run (200)")
    p.add_argument("--size", type=int, default=512, help="frame side [px] (512)")
    p.add_argument("--pixel", type=float, default=0.2, help="pixel size [Å/px] (0.2)")
    p.add_argument("--batch-size", type=int, default=4, help="as atom3d predict --batch-size (4)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tta-passes", type=int, choices=(1, 4, 8), default=1,
                   help="network passes per frame, as atom3d predict --tta-passes (1)")
    p.add_argument("--forward-frames", type=int, default=None,
                   help="frames' worth of tiles timed for the bare network (default "
                        "min(--frames, 20))")
    p.add_argument("--rss-frames", default="100,1000",
                   help="comma-separated series lengths of the memory runs ('' = none)")
    p.add_argument("--rss-model", choices=("same", "tiny"), default="same",
                   help="network of the memory runs (default: the benchmarked one)")
    p.add_argument("--format", choices=("tif", "npy"), default="tif",
                   help="input file: ImageJ TIFF read page by page (default) or memory-mapped "
                        ".npy (its touched pages count as resident memory)")
    p.add_argument("--workdir", type=Path, default=None, help="keep data here (default: temp)")
    # child mode (internal)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--series", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    rss_frames = [int(v) for v in args.rss_frames.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="atom3d-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_arg, label = resolve_model(args.model, work)
        t0 = time.perf_counter()
        # the throughput run reads (and hashes, as atom3d predict does) a file of exactly
        # --frames frames; longer memory runs get their own file
        series = write_series(work / f"series.{args.format}", args.frames, args.size,
                              args.pixel)
        n_long = max(rss_frames, default=0)
        long_series = series if n_long <= args.frames else write_series(
            work / f"series_{n_long}.{args.format}", n_long, args.size, args.pixel)
        t_data = time.perf_counter() - t0
        script = Path(__file__).resolve()
        common = ["--series", str(series), "--pixel", str(args.pixel), "--model", model_arg,
                  "--batch-size", str(args.batch_size), "--device", args.device,
                  "--tta-passes", str(args.tta_passes)]
        n_fwd = args.forward_frames or min(args.frames, 20)
        # the bare network is timed before and after the end-to-end run and averaged,
        # so that a drift of a shared machine's speed does not bias the overhead
        before, n_tiles = forward_fps(model_arg, args.size, args.pixel, args.batch_size,
                                      args.device, n_fwd, args.tta_passes)
        e2e = run_child(script, common, args.frames, work / "throughput.h5")
        fps = e2e["frames"] / e2e["seconds"]
        after, _ = forward_fps(model_arg, args.size, args.pixel, args.batch_size,
                               args.device, n_fwd, args.tta_passes)
        fwd = 2.0 / (1.0 / before + 1.0 / after)  # mean time per frame
        rss_model, rss_label = model_arg, label
        if args.rss_model == "tiny":
            rss_model, rss_label = resolve_model(None, work, kind="tiny")
        rss_common = ["--series", str(long_series), *common[2:4], "--model", rss_model,
                      *common[6:]]
        rss = {}
        for n in rss_frames:
            rss[n] = run_child(script, rss_common, n, work / f"rss_{n}.h5")
    import torch

    result = {
        "benchmark": "predict",
        "model": label,
        "frames": args.frames,
        "frame_shape": [args.size, args.size],
        "pixel_size_A": args.pixel,
        "input_format": args.format,
        "batch_size": args.batch_size,
        "device": args.device,
        "tta_passes": args.tta_passes,
        "torch_threads": torch.get_num_threads(),
        "tiles_per_frame": n_tiles,
        "frames_per_second": round(fps, 4),
        "forward_frames_per_second": round(fwd, 4),
        "forward_frames_per_second_before_after": [round(before, 4), round(after, 4)],
        "overhead": round(1.0 - fps / fwd, 4),
        "overhead_in_run": round(1.0 - e2e["network_s"] / e2e["seconds"], 4),
        "end_to_end_seconds": round(e2e["seconds"], 2),
        "startup_seconds": round(e2e["startup_s"], 2),
        "lattice_check_seconds": round(e2e.get("lattice_check_s", float("nan")), 2),
        "throughput_run_maxrss_mb": round(e2e["maxrss_mb"], 1),
        "data_seconds": round(t_data, 1),
        "rss_model": rss_label,
        **{f"rss_mb_{n}": round(r["maxrss_mb"], 1) for n, r in rss.items()},
        **{f"rss_frame_loop_mb_{n}": round(r["loop_maxrss_mb"], 1) for n, r in rss.items()},
        **{f"rss_anon_after_loop_mb_{n}": round(r["loop_end_anon_mb"], 1)
           for n, r in rss.items()},
        **{f"columns_{n}": r["n_columns"] for n, r in rss.items()},
        **{f"rss_run_{n}_seconds": round(r["seconds"], 1) for n, r in rss.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
