# Session 21 one-off script (not part of the package): see README.md in this folder.
"""Recompute the shipped run-10 artifact's training domain with the fixed export code.

    python fix_domain.py MODEL_DIR [--write]

Until session 21 ``export_checkpoint`` dropped the extra training stores of a checkpoint
(``data.extra_train_paths``) before describing the training domain, so run 10's artifact
recorded only its main store. The domain is a function of the stores and the data
hyper-parameters alone (no network, no calibration): this rebuilds the data module from
the checkpoint as the fixed export does and rewrites ``training_domain`` only.
"""
import json
import sys
from pathlib import Path

from atom3d.data.datamodule import ColumnDataModule
from atom3d.training import export as E

ckpt = E._read_checkpoint("training/checkpoints/ceo2_110_run10-last.ckpt")
hp = E._arguments_of(ColumnDataModule, ckpt.get("datamodule_hyper_parameters", {}))
print("path", hp["path"], "extras", hp.get("extra_train_paths"))
hp.update(num_workers=0, persistent_workers=False, val_crop_px=None)
dm = ColumnDataModule(**hp)
dom = E._strict_json(E.training_domain(dm.info, dict(dm.hparams), dm.extra_infos))
cfgp = Path(sys.argv[1]) / "config.json"
cfg = json.loads(cfgp.read_text())
old = cfg["training_domain"]
for k in sorted(set(old) | set(dom)):
    if old.get(k) != dom.get(k):
        print("CHANGED", k, json.dumps(old.get(k))[:300], "->", json.dumps(dom.get(k))[:400])
if "--write" in sys.argv:
    cfg["training_domain"] = dom
    cfgp.write_text(json.dumps(cfg, indent=2, allow_nan=False) + "\n")
    print("written")
