# Session 20 research script (not part of the package): see README.md in this folder.
"""Paired change-detection comparison on stored domain series.

    MODEL=DIR python dom_compare.py OUTROOT SERIESDIR [SERIESDIR ...]

Shipped model: post-processing re-run from each series' stored pre_post (no network).
MODEL: the network runs once per series (8 passes) into OUTROOT/<name>/, then the same
post-processing. Prints per-series and total changes / flicker / Ce F1 / exact.
"""
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "domain_series_s16"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "change_detection_s12"))
import pp_variants as PV  # noqa: E402

from atom3d.models.artifact import load_artifact  # noqa: E402

out_root = Path(sys.argv[1])
dirs = [Path(a) for a in sys.argv[2:]]
model = os.environ.get("MODEL")
tot = {}
SHIPPED = PV.ARTIFACT
NEW = load_artifact(model) if model else None
for d in dirs:
    rows = {}
    PV.ARTIFACT = SHIPPED
    rows["ship"] = PV.run(d, {})
    if model:
        nd = out_root / d.name
        nd.mkdir(parents=True, exist_ok=True)
        # demo.h5: read (and not used) by the scoring's loader, which wants the file
        for f in ("demo_series.tif", "truth_columns.csv", "truth_drift.csv", "demo.h5"):
            if not (nd / f).exists():
                shutil.copy(d / f, nd / f)
        PV.ARTIFACT = NEW
        PV.capture(nd)
        rows["new"] = PV.run(nd, {})
    line = [d.name]
    for k, sc in rows.items():
        ce, tm = sc["Ce"], sc["Ce_time"]
        t = tot.setdefault(k, {"rep": 0, "true": 0, "fl": 0, "steady": 0, "tp": 0, "fp": 0,
                               "fn": 0, "worst": 0.0, "under80": 0})
        for key, value in (("rep", tm["changes_reported"]), ("true", tm["changes_true"]),
                           ("fl", tm["flickers"]), ("steady", tm["steady_pairs"]),
                           ("tp", ce["tp"]), ("fp", ce["fp"]), ("fn", ce["fn"])):
            t[key] += value
        t["worst"] = max(t["worst"], tm["flicker"])
        t["under80"] += tm["changes_reported"] < 0.8 * tm["changes_true"]
        line.append(f"{k}: F1 {ce['f1']:.3f} exact {ce['exact']:.3f} changes "
                    f"{tm['changes_reported']}/{tm['changes_true']} flicker {tm['flicker']:.1%}")
    print(" | ".join(line), flush=True)
for k, t in tot.items():
    f1 = 2 * t["tp"] / (2 * t["tp"] + t["fp"] + t["fn"])
    print(f"ALL {k}: Ce F1 {f1:.4f} changes {t['rep']}/{t['true']} ({t['rep'] / t['true']:.1%}) "
          f"flicker {t['fl'] / t['steady']:.2%} worst {t['worst']:.1%} series<80% {t['under80']}")
