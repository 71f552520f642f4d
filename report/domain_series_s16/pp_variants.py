# Session 16 research script (not part of the package): see README.md in this folder.
"""Re-run ``atom3d predict``'s post-processing with other constants on stored series.

For each series directory (``demo_series.tif``, ``truth_*.csv``, as written by ``atom3d
demo`` or ``report/domain_series_s13/domain_series.py``) the network part of ``atom3d
predict`` (8 passes) runs once and the partial results file just before post-processing
is kept (``pre_post.h5.partial``, ``pre_post.pkl``). Each variant then sets module
constants of :mod:`atom3d.inference.series`, post-processes a copy, and is scored by
:func:`atom3d.demo.evaluate_against_truth`. With no variant changed it reproduces the
scores of the series' own ``metrics.json``.

    VARIANTS='[{}, {"CHANGEPOINT_LEVEL_WEIGHT": 0.6}]' python pp_variants.py DIR [DIR ...]
"""
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "change_detection_s12"))
from offline import load  # noqa: E402

import atom3d.inference.series as S  # noqa: E402
from atom3d.demo import evaluate_against_truth  # noqa: E402
from atom3d.inference.predictor import Predictor  # noqa: E402
from atom3d.io.readers import open_series  # noqa: E402
from atom3d.io.results import ResultsWriter  # noqa: E402
from atom3d.models.artifact import load_artifact  # noqa: E402

ARTIFACT = load_artifact("ceo2-110")
ORIGINAL = S.postprocess


def keeper(directory_of):
    """``postprocess`` that first copies the partial file and its arguments to
    ``directory_of(writer)`` (``pre_post.h5.partial``, ``pre_post.pkl``)."""

    def keep(writer, *args, **kwargs):
        d = directory_of(writer)
        writer._commit_pending()
        writer._file.flush()
        shutil.copy(writer.partial_path, d / "pre_post.h5.partial")
        info = {"shape": writer.shape, "n_frames": writer.n_frames, "attrs": writer._attrs,
                "args": args[:3], "kwargs": {"track_detection": kwargs["track_detection"]}}
        (d / "pre_post.pkl").write_bytes(pickle.dumps(info))
        return ORIGINAL(writer, *args, **kwargs)

    return keep


def capture(d: Path) -> None:
    """Predict the series once and keep the partial file before post-processing."""
    if (d / "pre_post.h5.partial").exists():
        return

    keep = keeper(lambda writer: d)
    S.postprocess = keep
    try:
        with open_series(d / "demo_series.tif") as series:
            S.predict_series(series, d / "tmp_out.h5", Predictor(ARTIFACT, tta=8),
                             progress=False)
    finally:
        S.postprocess = ORIGINAL
    (d / "tmp_out.h5").unlink()


def run(d: Path, settings: dict) -> dict:
    """Post-process a copy with ``settings`` (module constants) and score it."""
    info = pickle.loads((d / "pre_post.pkl").read_bytes())
    saved = {k: getattr(S, k) for k in settings}
    out = d / "variant.h5"
    for p in (out, Path(f"{out}.partial")):
        p.unlink(missing_ok=True)
    shutil.copy(d / "pre_post.h5.partial", f"{out}.partial")
    try:
        for k, v in settings.items():
            setattr(S, k, v)
        writer = ResultsWriter(out, shape=info["shape"], n_frames=info["n_frames"],
                               attrs=info["attrs"], resume=True)
        with open_series(d / "demo_series.tif") as series:
            S.postprocess(writer, *info["args"], ARTIFACT.map_confidence, image=series.frame,
                          **info["kwargs"])
        writer.finalize()
    finally:
        for k, v in saved.items():
            setattr(S, k, v)
    _, truth, drift = load(d)
    return evaluate_against_truth(out, truth, drift)


def main(dirs: list[Path]) -> None:
    for d in dirs:
        capture(d)
    for variant in json.loads(os.environ.get("VARIANTS", "[{}]")):
        score(dirs, variant, variant)


def score(dirs: list[Path], settings: dict, label) -> None:
    """Post-process every series with ``settings`` and print the pooled change scores."""
    total = np.zeros(4)
    worst = 0.0
    parts = []
    for d in dirs:
        tm = run(d, settings)["Ce_time"]
        total += [tm["changes_reported"], tm["changes_true"], tm["flickers"],
                  tm["steady_pairs"]]
        worst = max(worst, tm["flicker"])
        parts.append(f"{d.name}:{tm['changes_reported']}/{tm['changes_true']}"
                     f"@{tm['flicker']:.1%}")
    print(label, f"changes {int(total[0])}/{int(total[1])} ({total[0] / total[1]:.1%}) "
          f"flicker {total[2] / total[3]:.2%} worst {worst:.1%} |", " ".join(parts),
          flush=True)

if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
