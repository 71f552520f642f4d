"""Sweep ``atom3d``'s readers over a directory of real microscope files.

Every file under ``DIR`` (recursively; extensions the readers know, plus ``--all`` for
every file) is opened the way ``atom3d predict`` opens it (:func:`atom3d.io.readers.open_series`),
and its first and last frames are read. Each file ends in one of three outcomes:

``read``
    opened, with the pixel size [Å/px], frame count and frame shape;
``refused``
    a :class:`~atom3d.errors.UserError` (``atom3d predict`` prints its one line and exits 2);
``crash``
    any other exception: a bug (``atom3d predict`` would print a traceback).

Byte-corrupted and truncated copies (``--corrupt N``: N copies of each file, bytes flipped
at random offsets, and one copy cut at half its length) are swept the same way.

Usage: ``python benchmarks/reader_sweep.py DIR [--corrupt 2] [--json OUT]``. Files to
sweep are not shipped (third-party licences): ``../shared/realdata/`` holds some; the
test-data folders of the hyperspy 1.3 wheel and the mrcfile sdist hold many more (DM3/DM4,
TIA, EMD, MRC, TIFF, blockfile, SEMPER, ripple, HDF5).

The last line printed is one JSON object: counts per outcome and the list of crashes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

EXTENSIONS = {".dm3", ".dm4", ".emd", ".ser", ".emi", ".mrc", ".mrcs", ".map", ".rec",
              ".st", ".ali", ".tif", ".tiff", ".hspy", ".h5", ".hdf5", ".zspy", ".npy",
              ".zarr", ".blo", ".unf", ".rpl", ".bcf", ".msa", ".dens", ".png", ".jpg"}


def sweep_one(path: Path, pixel_size_A: float | None = None) -> dict:
    """Open ``path`` as ``atom3d predict`` does (``--pixel-size``: ``pixel_size_A``) and
    read its first and last frames."""
    from atom3d.errors import UserError
    from atom3d.io.readers import open_series

    out: dict = {"file": str(path)}
    try:
        with open_series(path, pixel_size_A=pixel_size_A) as series:
            first = series.frame(0)
            last = series.frame(series.n_frames - 1)
            if first.shape != tuple(series.shape) or last.shape != tuple(series.shape):
                raise AssertionError(f"frame shape {first.shape} != series shape {series.shape}")
            out.update(outcome="read", pixel_size_A=float(series.pixel_size_A),
                       n_frames=int(series.n_frames), shape=list(series.shape),
                       dtype=str(first.dtype), finite=bool(np.isfinite(first).all()),
                       frame_interval_s=float(series.frame_interval_s))
    except UserError as exc:
        message = str(exc)
        out.update(outcome="refused", message=message)
        if "\n" in message.strip() or not message.strip():
            out.update(outcome="crash", error="refusal is not one line: " + repr(message))
    except Exception as exc:  # noqa: BLE001 - a crash is what the sweep looks for
        out.update(outcome="crash", error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc(limit=6))
    return out


def corrupted_copies(path: Path, workdir: Path, n: int, rng: np.random.Generator) -> list[Path]:
    """``n`` copies with bytes flipped at random offsets, and one cut at half its length."""
    data = path.read_bytes()
    copies = []
    if not data:
        return copies
    for i in range(n):
        buf = bytearray(data)
        for pos in rng.integers(0, len(buf), size=max(1, len(buf) // 2000)):
            buf[pos] ^= 0xFF
        dst = workdir / f"{path.stem}.flip{i}{path.suffix}"
        dst.write_bytes(bytes(buf))
        copies.append(dst)
    dst = workdir / f"{path.stem}.half{path.suffix}"
    dst.write_bytes(data[: len(data) // 2])
    copies.append(dst)
    return copies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="directory of files to sweep (recursive)")
    p.add_argument("--all", action="store_true", help="every file, not only known extensions")
    p.add_argument("--corrupt", type=int, default=0, metavar="N",
                   help="also sweep N byte-flipped copies and one truncated copy of each file")
    p.add_argument("--pixel-size", type=float, default=None, metavar="A",
                   help="as atom3d predict --pixel-size [Å/px]: reads files whose own "
                        "calibration is missing or too coarse")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruption (0)")
    p.add_argument("--json", type=Path, default=None, help="write every file's outcome here")
    args = p.parse_args(argv)
    files = sorted(f for f in args.dir.rglob("*") if f.is_file() and (
        args.all or f.suffix.lower() in EXTENSIONS))
    rng = np.random.default_rng(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="atom3d-sweep-") as tmp:
        for f in files:
            results.append(sweep_one(f, args.pixel_size))
            if args.corrupt:
                for copy in corrupted_copies(f, Path(tmp), args.corrupt, rng):
                    r = sweep_one(copy, args.pixel_size)
                    r["corrupted_from"] = str(f)
                    results.append(r)
                    copy.unlink()
            line = results[-1 - (args.corrupt + 1 if args.corrupt else 0)]
            print(f"{line['outcome']:8s} {f}  {line.get('pixel_size_A', line.get('message', line.get('error', '')))}"[:200],
                  file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("read", "refused", "crash")}
    crashes = [{"file": r["file"], "error": r["error"]} for r in results if r["outcome"] == "crash"]
    print(json.dumps({"benchmark": "reader_sweep", "files": len(files), "opened": len(results),
                      **counts, "crashes": crashes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
