# Session 18 research script (not part of the package): see README.md in this folder.
"""Corrupted copies of every readable-format file under the given folders: cut to half,
cut to 1000 bytes, and 30 random bytes overwritten past the first eighth (seed 0). Each
copy must open and read all its frames, or raise InputFileError with one line; anything
else is printed as a BUG. Copies go to $TMPDIR/atom3d_corrupt.

    python corrupt.py DIR [DIR ...]
"""
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

from atom3d.io.readers import InputFileError, open_series

EXTS = {".dm3", ".dm4", ".emd", ".ser", ".emi", ".tif", ".tiff", ".mrc", ".hspy", ".h5",
        ".hdf5", ".npy"}


def main(roots: list[Path]) -> None:
    out = Path(tempfile.gettempdir()) / "atom3d_corrupt"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    files = [p for r in roots for p in sorted(r.rglob("*")) if p.is_file()
             and p.suffix.lower() in EXTS and p.stat().st_size < 8e6]
    rng = random.Random(0)
    cases = bugs = 0
    for p in files:
        data = p.read_bytes()
        flipped = bytearray(data)
        for _ in range(30):
            i = rng.randrange(len(flipped) // 8, len(flipped)) if len(flipped) > 16 else 0
            flipped[i] = rng.randrange(256)
        for tag, blob in {"half": data[: len(data) // 2], "1k": data[:1000],
                          "flip": bytes(flipped)}.items():
            q = out / f"{tag}_{p.name}"
            q.write_bytes(blob)
            if p.suffix == ".emi":  # its data file, intact, beside it
                for ser in p.parent.glob(p.stem + "_*.ser"):
                    shutil.copy(ser, out / f"{tag}_{ser.name}")
            cases += 1
            try:
                with open_series(q) as s:
                    for i in range(s.n_frames):
                        s.frame(i)
            except InputFileError as exc:
                if "\n" in str(exc):
                    print(f"{q.name}: MULTILINE {exc!s:.200}", flush=True)
            except Exception as exc:  # noqa: BLE001 - that is what this script looks for
                bugs += 1
                print(f"{q.name}: BUG {type(exc).__name__}: {exc!s:.200}", flush=True)
    print(f"files {len(files)} cases {cases} bugs {bugs} (pid {os.getpid()})")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])
