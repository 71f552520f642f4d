"""Write a test set's figures by dose into a model's ``config.json`` (``metrics.test_by_dose``).

``atom3d info MODEL`` lists them and ``atom3d predict`` prints the row at the dose of
the user's frames, so what the model card measured travels with the weights. Only the
free-form ``metrics`` entry changes; weights, calibration and their hash do not.

    python training/write_test_figures.py atom3d/models/ceo2-110 \\
        report/run10_s21/test_particles_seed9003/metrics.json \\
        --test-set "64 isolated particles x 4 images, seed 9003, never trained on"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from atom3d.models.summary import TEST_BY_DOSE, dose_figures_entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("metrics", type=Path, help="metrics.json of atom3d evaluate")
    ap.add_argument("--test-set", required=True, help="what the test set is, in words")
    a = ap.parse_args()
    path = a.model_dir / "config.json"
    config = json.loads(path.read_text())
    doc = json.loads(a.metrics.read_text())
    entry = dose_figures_entry(doc, a.test_set, source=str(a.metrics))
    model_sha = doc["methods"]["network"].get("model_sha256")
    if model_sha != config["weights_sha256"]:
        raise SystemExit(f"{a.metrics} was measured with other weights ({model_sha})")
    config.setdefault("metrics", {})[TEST_BY_DOSE] = entry
    path.write_text(json.dumps(config, indent=2) + "\n")
    print(f"{path}: metrics.{TEST_BY_DOSE} = {len(entry['bins'])} dose bins from {a.metrics}")


if __name__ == "__main__":
    main()
