# Session 19 helper (not part of the package): keep only the U-Net weights of a Lightning
# checkpoint (4.4 MB instead of 13 MB with the optimizer state). The result still serves
# as `--model.init_weights` of `atom3d train fit` (it reads ["state_dict"]["net.*"]).
#     python slim_checkpoint.py IN.ckpt OUT.ckpt
import sys

import torch

ck = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
torch.save({"state_dict": {k: v for k, v in ck["state_dict"].items() if k.startswith("net.")},
            "epoch": ck.get("epoch"), "global_step": ck.get("global_step")}, sys.argv[2])
