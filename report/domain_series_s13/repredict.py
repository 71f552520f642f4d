# Session 13 research script (not part of the package): see README.md in this folder.
"""Run the current ``atom3d predict`` pipeline on stored series and score it.

    python repredict.py TAG DIR [DIR ...]

For each series directory (``demo_series.tif`` and the truth files of
:func:`atom3d.demo.simulate_demo_series`) writes ``DIR/predict_TAG.h5`` (kept: reruns
with the same tag only score) and prints Ce/O detection F1, exact depth, flicker and
change recall; the last line sums over the series.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "change_detection_s12"))
from offline import load  # noqa: E402

from atom3d.demo import evaluate_against_truth  # noqa: E402
from atom3d.inference.predictor import Predictor  # noqa: E402
from atom3d.inference.series import predict_series  # noqa: E402
from atom3d.io.readers import open_series  # noqa: E402
from atom3d.models.artifact import load_artifact  # noqa: E402


def main(tag, dirs):
    pred = Predictor(load_artifact("ceo2-110"), tta=8)
    tot = {"tp": 0, "fp": 0, "fn": 0, "otp": 0, "ofp": 0, "ofn": 0, "rep": 0, "true": 0,
           "fl": 0, "steady": 0}
    worst = 0.0
    for d in dirs:
        _, truth, drift = load(d)
        out = d / f"predict_{tag}.h5"
        if not out.exists():
            with open_series(d / "demo_series.tif") as s:
                predict_series(s, out, pred, progress=False)
        sc = evaluate_against_truth(out, truth, drift)
        ce, o, tm = sc["Ce"], sc["O"], sc["Ce_time"]
        print(f"{d.name}: Ce F1 {ce['f1']:.3f} (fp {ce['fp']}, fn {ce['fn']}) exact "
              f"{ce['exact']:.3f} | O F1 {o['f1']:.3f} | changes {tm['changes_reported']}/"
              f"{tm['changes_true']} flicker {tm['flicker']:.1%}", flush=True)
        tot["tp"] += ce["tp"]
        tot["fp"] += ce["fp"]
        tot["fn"] += ce["fn"]
        tot["otp"] += o["tp"]
        tot["ofp"] += o["fp"]
        tot["ofn"] += o["fn"]
        tot["rep"] += tm["changes_reported"]
        tot["true"] += tm["changes_true"]
        tot["fl"] += tm["flickers"]
        tot["steady"] += tm["steady_pairs"]
        worst = max(worst, tm["flicker"])
    f1 = 2 * tot["tp"] / (2 * tot["tp"] + tot["fp"] + tot["fn"])
    of1 = 2 * tot["otp"] / (2 * tot["otp"] + tot["ofp"] + tot["ofn"])
    print(f"ALL {tag}: Ce F1 {f1:.4f} (fp {tot['fp']}, fn {tot['fn']}) | O F1 {of1:.4f} "
          f"(fp {tot['ofp']}, fn {tot['ofn']}) | changes {tot['rep']}/{tot['true']} "
          f"({tot['rep'] / tot['true']:.0%}) flicker {tot['fl'] / tot['steady']:.1%} "
          f"worst {worst:.1%}")


if __name__ == "__main__":
    main(sys.argv[1], [Path(a) for a in sys.argv[2:]])
