"""``atom3d train``: a thin wrapper around :class:`lightning.pytorch.cli.LightningCLI`.

::

    atom3d train fit --config configs/train/ceo2_110.yaml [--export models/ceo2-110]
    atom3d train fit --config configs/train/ceo2_110.yaml --ckpt_path last     # resume
    atom3d train validate --config configs/train/ceo2_110.yaml --ckpt_path last
    atom3d train export CKPT -o DIR [--data STORE]                             # calibrate + export
    atom3d train recalibrate MODEL -o DIR --data STORE... [--tta-passes 8]     # calibration for N passes

The schema of the config is the code's own signatures: ``model:`` =
:class:`atom3d.training.task.ColumnSegmentationTask`, ``data:`` =
:class:`atom3d.data.datamodule.ColumnDataModule`, ``trainer:`` = Lightning's ``Trainer``,
``checkpoint:`` = :class:`~lightning.pytorch.callbacks.ModelCheckpoint` (always on: the
best ``val/loss`` is kept, and ``last.ckpt`` is rewritten after every training epoch
whether or not the loss improved, so ``--ckpt_path last`` loses at most one epoch; set
``checkpoint.dirpath`` to a fixed folder so "last" is found), ``lr_monitor:`` =
:class:`~lightning.pytorch.callbacks.LearningRateMonitor`. ``model.max_depth`` and
``model.class_frequencies`` are taken from the dataset, ``data.size_multiple`` from
``model.depth``. ``--export DIR`` (or ``export: DIR`` in the config) calibrates the
temperature on the validation split after ``fit`` and writes the model artifact there
(:mod:`atom3d.training.export`), from the best checkpoint (lowest ``val/loss``) if one
was saved, else from the final weights.

DDP needs no code change: ``--trainer.strategy ddp --trainer.accelerator cpu
--trainer.devices 2`` (gloo). Lightning starts the other ranks by re-running the
command line, so run it as ``atom3d train ...`` or ``python -m atom3d.training.main ...``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from atom3d.errors import UserError

EXIT_USER_ERROR = 2


def _cli_class():
    """The LightningCLI subclass (imported lazily: Lightning is a training-only extra)."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    class EpochCheckpoint(ModelCheckpoint):
        """ModelCheckpoint whose ``last.ckpt`` follows every epoch, improved or not.

        Lightning writes ``last.ckpt`` only when a top-k checkpoint is saved, so a run
        whose monitored loss has not improved for a while (e.g. after a learning-rate
        restart) would resume from long ago.
        """

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            super().on_train_epoch_end(trainer, pl_module)
            self._save_last_now(trainer)

        def on_validation_end(self, trainer, pl_module) -> None:
            super().on_validation_end(trainer, pl_module)
            self._save_last_now(trainer)

        def _save_last_now(self, trainer) -> None:
            # Skipped when a checkpoint of this step exists already (then last.ckpt is
            # current). The top-k bookkeeping is left alone: a validation that ends at
            # the same step still saves its best checkpoint.
            if not self.save_last or self._should_skip_saving_checkpoint(trainer):
                return
            path = self.format_checkpoint_name(self._monitor_candidates(trainer),
                                               self.CHECKPOINT_NAME_LAST)
            self.last_model_path = path
            trainer.save_checkpoint(path, self.save_weights_only)

    class Atom3dCLI(LightningCLI):
        """LightningCLI with checkpointing, dataset-derived heads and ``--export``."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(EpochCheckpoint, "checkpoint")
            parser.set_defaults({
                "checkpoint.save_last": True,
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "epoch{epoch:03d}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
            })
            parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
            parser.set_defaults({"lr_monitor.logging_interval": "step"})
            parser.link_arguments("data", "model.max_depth",
                                  compute_fn=lambda dm: dm.max_depth, apply_on="instantiate")
            parser.link_arguments("data", "model.class_frequencies",
                                  compute_fn=lambda dm: dm.class_frequencies,
                                  apply_on="instantiate")
            parser.link_arguments("model.depth", "data.size_multiple",
                                  compute_fn=lambda depth: 2 ** depth, apply_on="parse")
            parser.add_argument(
                "--export", type=str | None, default=None,
                help="after fit: calibrate on the validation split and write the model "
                     "artifact (model.safetensors + config.json) into this directory")
            parser.add_argument("--export_name", type=str, default="ceo2-110",
                                help="model name written into the exported artifact")

    return Atom3dCLI


def build_cli(argv: list[str], run: bool = True) -> Any:
    """Parse ``argv`` (``[SUBCOMMAND] --config ...``), instantiate and optionally run."""
    from atom3d.data.datamodule import ColumnDataModule
    from atom3d.training.task import ColumnSegmentationTask

    # argv is explicit on purpose (tests, `atom3d train`); not a mistake to warn about.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return _cli_class()(
        ColumnSegmentationTask,
        ColumnDataModule,
        args=argv,
        run=run,
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": "runs", "name": "atom3d"}},
        },
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "atom3d train", "default_env": False, "exit_on_error": False,
                       "description": "Train the column-depth U-Net on a simulated dataset "
                                      "(Lightning CLI). Pixel sizes in Å, doses in e/Å². "
                                      "Also: 'atom3d train export CKPT -o DIR' (calibrate and "
                                      "export a checkpoint) and 'atom3d train recalibrate "
                                      "MODEL -o DIR --data STORE' (calibration for N "
                                      "test-time augmentation passes); each has --help."},
    )


def export_after_fit(cli: Any, out_dir: str | Path, name: str) -> Path:
    """Calibrate and export after ``fit``: the best checkpoint if any, else the final weights."""
    from atom3d.training.export import export_checkpoint, export_model

    callback = cli.trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best and Path(best).is_file():
        return export_checkpoint(best, cli.datamodule.path, out_dir, name=name,
                                 num_workers=cli.datamodule.hparams.num_workers)
    return export_model(cli.model, cli.datamodule, out_dir, name=name,
                        extra_metrics={"checkpoint": {"file": None,
                                                      "epoch": cli.trainer.current_epoch,
                                                      "global_step": cli.trainer.global_step}})


def train_main(argv: list[str] | None = None) -> int:
    """Run ``atom3d train ARGV``; returns the exit code (2 with one line on a user error).

    ``argv[0]`` is a LightningCLI subcommand (``fit``, ``validate``, ``test``,
    ``predict``) or ``export`` (:func:`atom3d.training.export.export_main`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    if argv and argv[0] == "recalibrate":
        from atom3d.training.export import recalibrate_main

        return recalibrate_main(argv[1:])
    try:
        cli = build_cli(argv)
        if cli.subcommand == "fit":
            config = cli.config["fit"]
            out_dir = config.get("export")
            if out_dir and cli.trainer.is_global_zero:
                path = export_after_fit(cli, out_dir, config.get("export_name") or "ceo2-110")
                print(f"exported model artifact: {path}")
    except UserError as error:
        print(f"atom3d: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except argparse.ArgumentError as error:  # a bad option or config value
        message = " ".join(str(error).split())
        print(f"atom3d: error: {message} (see 'atom3d train fit --help')", file=sys.stderr)
        return EXIT_USER_ERROR
    except SystemExit as exit_:  # jsonargparse: --help (0) or a bad option (2)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USER_ERROR)
    return 0


def export_main(argv: list[str] | None = None) -> int:
    """``atom3d train export CKPT -o DIR``: see :func:`atom3d.training.export.export_main`."""
    from atom3d.training.export import export_main as _export_main

    return _export_main(argv)


if __name__ == "__main__":
    sys.exit(train_main())
