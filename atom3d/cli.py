"""The ``atom3d`` command line: one entry point, one sub-command per job.

User errors (bad files, options, configs) print one line on stderr and exit with 2;
heavy libraries are imported inside the sub-command that needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from atom3d import __version__
from atom3d.argtypes import add_tta_arguments
from atom3d.argtypes import non_negative_int as _seed
from atom3d.argtypes import positive_int as _positive_int
from atom3d.errors import UserError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"atom3d: error: {message} (see '{self.prog} --help')\n")


def _add_simulate(sub) -> None:
    p = sub.add_parser(
        "simulate", help="simulate a labelled CeO2 HRTEM dataset (abTEM multislice → zarr)",
        description=(
            "Simulate CeO2 HRTEM images with abTEM over structure, defects, tilt, optics and "
            "detector ranges given in a YAML config, and write a zarr dataset: noise-free "
            "images (vacuum = 1; Poisson noise at dose [e/Å²] is drawn during training), "
            "labels per species, column tables [Å] and every drawn parameter. Units in the "
            "config are in the key names (defocus_nm, cs_um, c5_mm, pixel_size_A, "
            "dose_e_per_A2, tilt_mrad, ...)."))
    p.add_argument("--config", required=True, type=Path, help="campaign YAML (configs/simulate/)")
    p.add_argument("--out", required=True, type=Path, help="output store, a new *.zarr directory")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="number of labelled images (default: n_images of the config)")
    p.add_argument("--images-per-structure", type=_positive_int, default=None, metavar="K",
                   help="optics/dose draws per simulated structure, 1-1024 (default: the "
                        "config's); test sets use fewer to hold more particles per image")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="local worker processes, one core each (default 1)")
    p.add_argument("--scheduler", default=None,
                   help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted store (same config, --n and --seed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args) -> int:
    import dataclasses
    import json

    from atom3d.simulation.campaign import load_campaign_config, run_campaign

    cfg = load_campaign_config(args.config)
    if args.n is not None:
        cfg = dataclasses.replace(cfg, n_images=args.n)
    if args.images_per_structure is not None:
        try:  # CampaignConfig checks the range
            cfg = dataclasses.replace(cfg, images_per_structure=args.images_per_structure)
        except ValueError as error:
            raise UserError(f"--images-per-structure: {error}") from None
    stats = run_campaign(cfg, args.out, seed=args.seed, workers=args.workers,
                         scheduler=args.scheduler, resume=args.resume, progress=not args.quiet)
    print(json.dumps({"out": str(args.out), **stats}))
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what a dataset, results file, model or microscope file "
                                    "holds; --plot draws it",
                       description="Summarise an atom3d dataset (*.zarr), results file (*.h5), "
                                   "model (a packaged model's name such as ceo2-110, or a "
                                   "directory with config.json + model.safetensors: its pixel "
                                   "size, training domain, calibration and validation figures) "
                                   "or an input that atom3d predict reads (a microscope file or "
                                   "image-sequence directory: frames, size, pixel size checked "
                                   "against the CeO2 lattice, frame interval, dose per frame, "
                                   "the frame on the network's grid). --plot draws dataset "
                                   "samples with their depth labels, or the figures of a "
                                   "results file.")
    p.add_argument("path", type=Path,
                   help="a dataset, a results file, a model directory or a packaged model "
                        "name, or a microscope file or image sequence")
    p.add_argument("--plot", type=Path, default=None,
                   help="dataset: PNG file to draw samples into; results: folder for figures")
    p.add_argument("--samples", type=_positive_int, default=8, help="samples to draw (default 8)")
    p.add_argument("--json", action="store_true",
                   help="model: print its whole configuration (config.json) as JSON; "
                        "results file: its root attributes and table sizes as JSON "
                        "(default: a summary to read)")
    p.set_defaults(func=_cmd_info)


def _json_value(v):
    """An HDF5 attribute as JSON: strings, numbers and booleans as they are, arrays as lists."""
    if isinstance(v, str | bool | int | float):
        return v
    import numpy as np

    arr = np.asarray(v)
    return arr.astype(str).tolist() if arr.dtype.kind in "USO" else arr.tolist()


def _cmd_info(args) -> int:
    import json

    from atom3d.models.artifact import load_artifact, packaged_models

    path = args.path
    is_model_dir = (path.is_dir() and (path / "config.json").is_file()
                    and not (path / "zarr.json").exists())
    if is_model_dir or (not path.exists() and str(path) in packaged_models()):
        from atom3d.models.summary import model_summary

        artifact = load_artifact(path if is_model_dir else str(path))
        if args.json:
            print(json.dumps(artifact.config, indent=1))
        else:
            print(model_summary(artifact.config, n_parameters=sum(
                p.numel() for p in artifact.model.parameters())))
        return 0
    if not path.exists():
        raise UserError(f"not found: {path} (not a file, a folder or a packaged model: "
                        f"{', '.join(packaged_models())})")
    if path.suffix.lower() in (".h5", ".hdf5"):
        from atom3d.io.results import read_results

        res = read_results(path, load_maps=False)
        frames = res["frames"]
        if args.json:
            summary = {"attrs": {k: _json_value(v) for k, v in res["attrs"].items()},
                       "frames": int(len(frames.get("frame", []))),
                       "valid_frames": int(sum(frames.get("valid", []))),
                       "columns": int(len(res["columns"].get("frame", []))),
                       "events": int(len(res["events"].get("frame", [])))}
            print(json.dumps(summary, indent=1, default=str))
        else:
            from atom3d.inference.overview import results_overview

            print(results_overview(res, path))
        if args.plot:
            from atom3d.inference.figures import plot_results

            written = plot_results(path, args.plot)
            print(f"wrote {len(written)} figures into {args.plot}")
        return 0
    from atom3d.io.readers import is_image_input

    if is_image_input(path):
        from atom3d.inference.overview import input_overview
        from atom3d.io.readers import open_series

        with open_series(path, uncalibrated_ok=True) as series:
            print(input_overview(series))
        return 0
    from atom3d.data.info import dataset_summary, plot_dataset

    summary = dataset_summary(path)
    print(json.dumps(summary, indent=1))
    if args.plot:
        plot_dataset(path, args.plot, n=args.samples)
        print(f"wrote {args.plot}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", add_help=False, prefix_chars="\0",
        help="train a model (LightningCLI: fit | validate | test; export | recalibrate); "
             "'atom3d train --help'",
        description="Train the U-Net with LightningCLI; see configs/train/ and training/README.md.")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from atom3d.training.main import train_main

    return train_main(list(args.args))


def _add_predict(sub) -> None:
    from atom3d.inference.options import PREDICT_DESCRIPTION, configure_predict_parser

    p = sub.add_parser("predict", help="column depths, tracks and events of HRTEM frames/series → HDF5",
                       description=PREDICT_DESCRIPTION)
    configure_predict_parser(p)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from atom3d.inference.series import run_predict

    return run_predict(args)


def _add_demo(sub) -> None:
    from atom3d.demo import DEMO_DESCRIPTION, configure_demo_parser

    p = sub.add_parser("demo", help="simulate a small in situ series and run predict on it",
                       description=DEMO_DESCRIPTION)
    configure_demo_parser(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from atom3d.demo import run_demo

    return run_demo(args)


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy of a model (and the classical baseline) on a test dataset",
        description=(
            "Run the model exactly as 'atom3d predict' does on every image of a simulated "
            "test dataset (shot noise drawn at each image's dose with a fixed seed), match "
            "columns to the truth (1.0 Å Ce, 0.7 Å O) and write OUT/metrics.json and plots: "
            "detection precision/recall/F1, exact and within-±1 depth accuracy, mean absolute "
            "depth error [atoms], ECE, confusion matrices, all broken down by dose [e/Å²], "
            "thickness [Å], defocus [Å], tilt [mrad] and pixel size [Å], and by structure "
            "kind (isolated particle or crystal with a surface in profile; OUT/dose_table.md "
            "has both tables)."))
    p.add_argument("--data", required=True, type=Path, help="test dataset (*.zarr)")
    p.add_argument("--model", default="ceo2-110", help="packaged model name or artifact directory")
    p.add_argument("-o", "--out", required=True, type=Path, help="output directory")
    p.add_argument("--baseline", action="store_true",
                   help="also run the classical intensity-matching baseline (oracle optics)")
    p.add_argument("--denoise", default="none",
                   help="comma-separated pre-filters before the network: none,gaussian,nlmeans")
    p.add_argument("--baseline-denoise", default="gaussian",
                   help="comma-separated filters of the baseline: gaussian,nlmeans,none")
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N images")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--batch-size", type=_positive_int, default=8,
                   help="tiles per batch (on a GPU per forward pass; a CPU takes one at a time)")
    p.add_argument("--noise-seed", type=_seed, default=12345, help="seed of the shot noise")
    add_tta_arguments(p, default=8)
    p.add_argument("--baseline-cache", type=Path, default=None,
                   help="directory of cached baseline columns per image (default "
                        "$ATOM3D_CACHE_DIR/baseline or ~/.cache/atom3d/baseline); entries are "
                        "keyed by image, noise seed, filter and baseline code")
    p.add_argument("--no-baseline-cache", action="store_true",
                   help="recompute the baseline on every image and store nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from atom3d.evaluation.evaluate import main_evaluate

    allowed = {"none", "gaussian", "nlmeans"}
    den = tuple(d.strip() for d in args.denoise.split(",") if d.strip())
    bden = tuple(d.strip() for d in args.baseline_denoise.split(",") if d.strip())
    bad = sorted(set(den + bden) - allowed)
    if bad:
        raise UserError(f"unknown denoising method {bad[0]!r} (choose from none, gaussian, nlmeans)")
    if not args.data.exists():
        raise UserError(f"test dataset not found: {args.data}")
    doc = main_evaluate(args.data, args.out, model=args.model, baseline=args.baseline,
                        denoise=den, baseline_denoise=bden, device=args.device,
                        batch_size=args.batch_size, limit=args.limit,
                        noise_seed=args.noise_seed, progress=not args.quiet,
                        baseline_cache=False if args.no_baseline_cache else args.baseline_cache,
                        tta=args.tta)
    from atom3d.evaluation.evaluate import dose_table

    print(_evaluation_table(doc))
    print()
    print(dose_table(doc))
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'dose_table.md'}")
    return 0


def _evaluation_table(doc: dict) -> str:
    """A short text table of the headline figures per method and species."""
    lines = [f"{'method':<18}{'species':<8}{'F1':>7}{'exact':>8}{'±1':>7}{'MAE':>7}{'ECE':>7}"]

    def f(v):
        return "   n/a" if v is None or v != v else f"{v:7.3f}"

    for method, res in doc["results"].items():
        for sp in ("Ce", "O"):
            o = res[sp]["overall"]
            lines.append(f"{method:<18}{sp:<8}{f(o['f1'])}{f(o['exact'])} {f(o['within1'])}"
                         f"{f(o['mae'])}{f(o['ece'])}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atom3d", description=(
        "3D atomic structure of CeO2 nanoparticles from single HRTEM images: column depths "
        "(atoms per column) of Ce and O columns, from simulation to in situ series."))
    parser.add_argument("--version", action="version", version=f"atom3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_simulate(sub)
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_demo(sub)
    _add_info(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad option (one line, code 2)
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"atom3d: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("atom3d: interrupted (rerun with --resume to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
