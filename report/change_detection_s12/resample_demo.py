# Session 12 research script (not part of the package): see README.md in this folder.
"""Copy a demo dir with its TIFF resampled to another pixel size (bilinear on the noisy
counts; a robustness check of the rings at other pixel sizes)."""
import shutil
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

src, pix = Path(sys.argv[1]), float(sys.argv[2])
dst = src.parent / f"{src.name}_p{pix:g}"
dst.mkdir(exist_ok=True)
shutil.copy(src / "truth_columns.csv", dst)
frames = tifffile.imread(src / "demo_series.tif").astype(np.float32)
n, h, w = frames.shape
out_n = int(np.floor((h - 1) * 0.2 / pix)) + 1
r = np.arange(out_n) * pix / 0.2
rr, cc = np.meshgrid(r, r, indexing="ij")
res = np.stack([ndimage.map_coordinates(f, [rr, cc], order=1) for f in frames])
res *= (pix / 0.2) ** 2  # counts per (larger/smaller) pixel
tifffile.imwrite(dst / "demo_series.tif", res.astype(np.float32), imagej=True,
                 resolution=(10 / pix, 10 / pix),
                 metadata={"axes": "TYX", "unit": "nm", "finterval": 1.0, "tunit": "s"})
print(dst)
