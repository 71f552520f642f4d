# Session 18 research script (not part of the package): see README.md in this folder.
"""Open every file under the given folders with atom3d's reader, and print one line each.

OK: format, frames, shape, pixel size, frame interval, the signal taken. ERR: the one-line
message that ``atom3d predict`` prints before exiting with 2. BUG: any other exception,
which the user would see as a traceback. A summary by outcome closes the output.

    python fuzz.py DIR [DIR ...]
"""
import collections
import sys
import time
from pathlib import Path

from atom3d.io.readers import InputFileError, open_series

KINDS = ("unknown file extension", "has no pixel calibration", "too coarse", "non-square",
         "is not a length", "not an image or", "complex data", "colour", "corrupt or truncated",
         "holds no image", "neither a Velox")


def outcome(path: Path) -> str:
    try:
        with open_series(path) as s:
            s.frame(0)
            s.frame(-1)
            return (f"OK {s.format} n={s.n_frames} shape={s.shape} px={s.pixel_size_A:.4g} Å "
                    f"dt={s.frame_interval_s:.3g} s note={s.signal_note!r}")
    except InputFileError as exc:
        text = str(exc)
        return ("ERR " if "\n" not in text else "ERR-MULTILINE ") + text
    except Exception as exc:  # noqa: BLE001 - that is what this script looks for
        return f"BUG {type(exc).__name__}: {str(exc)[:200]}"


def main(roots: list[Path]) -> None:
    summary = collections.Counter()
    for root in roots:
        for p in sorted(q for q in root.rglob("*") if q.is_file()):
            t0 = time.time()
            r = outcome(p).replace(f"{p}: ", "")
            print(f"{time.time() - t0:5.1f}s {p.relative_to(root)}: {r[:240]}", flush=True)
            head = r.split()[0]
            summary[next((k for k in KINDS if k in r), head) if head == "ERR" else head] += 1
    for kind, n in summary.most_common():
        print(f"{n:5d}  {kind}")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])
