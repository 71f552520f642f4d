"""Where the time of ``atom3d predict`` goes: wall and CPU seconds per stage.

Runs :func:`atom3d.inference.series.predict_series` in this process on the synthetic
series of ``benchmarks/predict.py`` (same particle, drift and dose; ``--frames`` frames of
``--size``² px at ``--pixel`` Å/px, ImageJ TIFF) and times its stages by wrapping them:

``network``
    the forward passes (``Predictor._network``);
``finish``
    calibrated maps, column finding and pooling of each batch (``Predictor.finish``; its
    thread pool's CPU time is included in ``finish_cpu``);
``write``
    writing each frame's maps and rows to the results file;
``postprocess``
    drift, tracking, smoothing, events and the per-frame summaries after the loop;
``other``
    the rest of the run (reading and resampling frames, hashing the input, opening and
    finalising the file).

``*_cpu`` is the process's CPU time (user + system, all threads) during the stage and
``*_faults`` its minor page faults. The CPU shares say what a change can gain: the
network keeps both cores busy, so only less CPU work elsewhere shortens the run
(``benchmarks/README.md``, session 15). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from predict import _Prefix, write_series  # noqa: E402  (the benchmark's synthetic series)


def _usage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, float(r.ru_minflt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ceo2-110", help="model name or directory (ceo2-110)")
    p.add_argument("--frames", type=int, default=40, help="frames (40)")
    p.add_argument("--size", type=int, default=512, help="frame side [px] (512)")
    p.add_argument("--pixel", type=float, default=0.2, help="pixel size [Å/px] (0.2)")
    p.add_argument("--batch-size", type=int, default=4, help="as atom3d predict (4)")
    p.add_argument("--tta-passes", type=int, choices=(1, 4, 8), default=1,
                   help="network passes per frame (1, as --no-tta)")
    args = p.parse_args(argv)

    import atom3d.inference.series as series_module
    from atom3d.inference.predictor import Predictor
    from atom3d.io.readers import open_series
    from atom3d.models.artifact import load_artifact

    totals: dict[str, float] = collections.defaultdict(float)

    def timed(owner, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def wrapper(*a, **k):
            t0, (c0, f0) = time.perf_counter(), _usage()
            try:
                return original(*a, **k)
            finally:
                c1, f1 = _usage()
                totals[stage] += time.perf_counter() - t0
                totals[f"{stage}_cpu"] += c1 - c0
                totals[f"{stage}_faults"] += f1 - f0

        setattr(owner, name, wrapper)

    timed(Predictor, "_network", "network")
    timed(Predictor, "finish", "finish")
    timed(series_module, "_write_prediction", "write")
    timed(series_module, "postprocess", "postprocess")
    predictor = Predictor(load_artifact(args.model), device="cpu",
                          batch_size=args.batch_size, tta=args.tta_passes)
    with tempfile.TemporaryDirectory(prefix="atom3d-stages-") as tmp:
        path = write_series(Path(tmp) / "series.tif", args.frames, args.size, args.pixel)
        with open_series(path) as series:
            t0, (c0, f0) = time.perf_counter(), _usage()
            summary = series_module.predict_series(_Prefix(series, args.frames),
                                                   Path(tmp) / "out.h5", predictor,
                                                   progress=False)
            c1, f1 = _usage()
            run = time.perf_counter() - t0
    stages = ("network", "finish", "write", "postprocess")  # as wrapped above
    result = {
        "benchmark": "predict_stages",
        "model": predictor.artifact.name,
        "frames": summary["n_frames"],
        "frame_shape": [args.size, args.size],
        "tta_passes": args.tta_passes,
        "columns": summary["n_columns"],
        "run_seconds": round(run, 2),
        "run_cpu_seconds": round(c1 - c0, 2),
        "run_faults": int(f1 - f0),
        **{key: int(value) if key.endswith("_faults") else round(value, 2)
           for key, value in totals.items()},
        "other": round(run - sum(totals[s] for s in stages), 2),
        "ms_per_frame_outside_network": round(
            1000 * (run - totals["network"]) / max(1, summary["n_frames"]), 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
