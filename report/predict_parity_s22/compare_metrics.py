# Session 22 research script (not part of the package): see README.md in this folder.
"""Every value of two ``metrics.json`` files (their ``results``), timings excluded: print
how many differ and the first 30 of them.

    python compare_metrics.py A/metrics.json B/metrics.json
"""
import json
import math
import sys

TIMINGS = ("seconds", "images_per_second", "seconds_per_image")


def walk(x, y, path, diffs):
    if isinstance(x, dict):
        for k in x:
            if k in TIMINGS:
                continue
            if isinstance(y, dict) and k in y:
                walk(x[k], y[k], f"{path}/{k}", diffs)
            else:
                diffs.append((f"{path}/{k}", "missing", None))
    elif isinstance(x, list):
        if not isinstance(y, list) or len(x) != len(y):
            diffs.append((path, "length", None))
            return
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            walk(u, v, f"{path}[{i}]", diffs)
    elif isinstance(x, (int, float)) and isinstance(y, (int, float)):
        if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
            diffs.append((path, x, y))
    elif x != y:
        diffs.append((path, x, y))


def main(a: str, b: str) -> None:
    diffs = []
    with open(a) as fa, open(b) as fb:
        walk(json.load(fa)["results"], json.load(fb)["results"], "", diffs)
    print(len(diffs), "differing values")
    for d in diffs[:30]:
        print(d)


if __name__ == "__main__":
    main(*sys.argv[1:3])
