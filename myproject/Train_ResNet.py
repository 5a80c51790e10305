"""Stage 1: train one density classifier per mammographic projection.

Faithful to the reference tutorial by default: the residual CNN of
``breastdensity.network`` at 650x650, batch 4, 100 epochs, Keras' plain SGD
(learning rate 0.01), categorical cross-entropy, ReduceLROnPlateau on the
validation loss, the best checkpoint by validation accuracy, TensorBoard logs,
the history txt files and the final model, all in ``<PROJ>_model/``.

Beyond the reference: tf.data input pipeline, all GPUs of a node (or several
nodes through TF_CONFIG), a run that resumes where it was killed
(``--resume``), early and clear errors on bad data, and a curves plot.

Examples::

    # the reference run, on a GPU node, from myproject/ (hours per projection)
    python Train_ResNet.py --projection CC_R

    # a quick CPU run on phantoms (see Make_Phantoms.py), all four projections
    python Train_ResNet.py --projection all --data-root ../data/phantoms \\
        --models-root ../runs --img-size 128 --epochs 3

    # real films and phantoms together, one network for the four projections
    # (the shipped models' recipe: docs/MODELS.md)
    python Train_ResNet.py --projection all --view-agnostic --targets ordinal \
        --data-root ../data/mias ../data/phantoms --models-root ../runs/real --img-size 128 \
        --batch-size 16 --epochs 20 --optimizer adam --learning-rate 3e-4 --lr-schedule cosine

    # continue after a crash or a preempted job (same settings, checked)
    python Train_ResNet.py --projection CC_R --resume

Exit status: 0 done, 2 bad arguments, data or output folder (a model folder in use by
another run, a disk that fills up during training: the completed epochs are kept for
--resume), 3 the loss became NaN or infinite (training diverged; lower --learning-rate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import breastdensity.quiet  # noqa: F401  first: TensorFlow then starts without its chatter

# isort: split

import keras
import tensorflow as tf

from breastdensity.conventions import (
    CHECKPOINT_PATTERN,
    CLASSES,
    CONFIG_FILE,
    FINAL_WEIGHTS,
    MIN_IMAGE_SIZE,
    PROJECTIONS,
    DatasetError,
    best_checkpoint,
    model_dir,
)
from breastdensity.files import (
    LOCK_FILE,
    FolderBusyError,
    UnwritableError,
    check_writable,
    hold_folder,
)
from breastdensity.inference import load_keras_file
from breastdensity.network import (
    BN_MOMENTUM,
    REFERENCE_BN_MOMENTUM,
    build_resnet,
    check_cardinality,
)
from breastdensity.training import (
    BACKUP_FOLDER,
    AtomicModelCheckpoint,
    HistoryRecorder,
    StopOnNonFiniteLoss,
    TrainingDiverged,
    choose_strategy,
    class_weights,
    data_fingerprint,
    plot_curves,
    save_config,
    save_model,
    training_datasets,
)

OPTIMIZERS = ("sgd", "sgd-nesterov", "rmsprop", "adam")
# Settings added after runs already existed: an older training_config.json
# without them was trained with these values (so --resume does not refuse it).
SETTINGS_BEFORE_THEY_WERE_RECORDED = {"bn_momentum": REFERENCE_BN_MOMENTUM, "targets": "onehot"}
# Settings an older training_config.json may lack, with no value to assume for it:
# missing, they are unknown, and --resume does not count them as changed.
UNKNOWN_WHEN_NOT_RECORDED = ("data_root_resolved", "data_fingerprint")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the breast-density ResNet, one model per projection.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=(
            "Data layout: <data-root>/TrainingSet/<PROJ>/train/<CLASS>/*.png and "
            "<data-root>/ValidationSet/<PROJ>/validation/<CLASS>/*.png, classes A B C D. "
            "Outputs: <models-root>/<PROJ>_model/ with weights-improvement-EE-A.AA.keras, "
            "final_weights.keras, loss/acc txt files, history.csv, training_curves.png, "
            "training_config.json and logs/ for TensorBoard. "
            "Example (CPU, phantoms): python Train_ResNet.py --projection all "
            "--data-root ../data/phantoms --models-root ../runs/demo --img-size 128 "
            "--batch-size 16 --epochs 30 --optimizer adam --lr-schedule cosine. "
            "Exit status 3: the loss became NaN or infinite; nothing of that epoch is saved."
        ),
    )
    parser.add_argument(
        "--projection", required=True, choices=[*PROJECTIONS, "all"], help="projection to train"
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        nargs="+",
        default=[Path(".")],
        help="holds TrainingSet/ and ValidationSet/; several roots are trained on together "
        "(stage-0 output of real films and phantoms, say), a root without a projection's "
        "folders then contributes nothing to it",
    )
    parser.add_argument(
        "--view-agnostic",
        action="store_true",
        help="with --projection all: train ONE network on the images of all four projections "
        "and write it to every <PROJ>_model/ (for data with some views only, such as MIAS' "
        "MLO films)",
    )
    parser.add_argument(
        "--models-root", type=Path, default=Path("."), help="receives <PROJ>_model/"
    )
    parser.add_argument(
        "--img-size", type=int, default=650, help="side of the square network input"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="images per batch on each device (global = x devices)",
    )
    parser.add_argument("--epochs", type=int, default=100, help="training epochs")
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="sgd: the reference (plain SGD). sgd-nesterov and rmsprop: the two optimizers the "
        "reference script defined but never used. adam: adaptive step sizes, little tuning; "
        "the shipped CPU models used it for a 30-epoch run",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help=f"> 0; default: {resolved_learning_rate('sgd', None)} for SGD, "
        f"{resolved_learning_rate('adam', None)} otherwise. Training stops with exit status 3 "
        "at the first NaN or infinite loss (a rate too high), without saving that epoch",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=("plateau", "cosine"),
        default="plateau",
        help="plateau: the reference's ReduceLROnPlateau (val_loss, factor 0.1, patience 15, "
        "min_lr 0.001). cosine: decay smoothly to 1%% of the initial rate over the run; with "
        "few epochs it ends on stable weights where a constant rate keeps oscillating",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of weights, shuffling and augmentation"
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="float16 compute on GPUs (bfloat16 on CPU), faster on GPUs with tensor cores "
        "(not measured here: no GPU)",
    )
    parser.add_argument(
        "--class-weights",
        action="store_true",
        help="weight the loss by inverse class frequency (for unbalanced, screening-like data)",
    )
    parser.add_argument(
        "--targets",
        choices=("onehot", "ordinal"),
        default="onehot",
        help="onehot: the reference's one class per image. ordinal: soft targets that give "
        "the neighbouring classes some weight (for labels coarser than A-D, such as MIAS' "
        "three levels)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its last completed epoch (skips finished "
        "projections); refused if the settings differ from its training_config.json",
    )
    parser.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: accept settings that differ from the interrupted run's; "
        "training_config.json then records the old and new values under changes_on_resume",
    )
    parser.add_argument(
        "--cardinality",
        type=int,
        default=1,
        help="ResNeXt groups in the 3x3 convolutions (1 = reference)",
    )
    parser.add_argument(
        "--bn-momentum",
        type=float,
        default=BN_MOMENTUM,
        help="moving-average momentum of batch normalization; the reference's 0.99 (Keras' "
        "default) lags behind on short runs and the validation accuracy with it",
    )
    parser.add_argument(
        "--no-augmentation", action="store_true", help="train without the reference's augmentation"
    )
    parser.add_argument(
        "--photometric-augmentation",
        action="store_true",
        help="add gray-level augmentation (gamma, contrast, blur, noise; background kept) after the "
        "reference's geometric one: for models meant to meet real mammograms (off: the reference)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="MODELS_ROOT",
        help="start from the weights of the best checkpoint in MODELS_ROOT/<PROJ>_model/, else its "
        "final_weights.keras "
        "(any input size: the network ends in global average pooling) instead of random ones",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="decode every image every epoch instead of caching decoded images in memory "
        "(by default they are cached when they take at most 4 GiB)",
    )
    parser.add_argument(
        "--cpu-replicas",
        type=int,
        default=0,
        help="testing aid: mirror over this many logical CPU devices, as on a multi-GPU node",
    )
    args = parser.parse_args(argv)
    if args.view_agnostic and args.projection != "all":
        parser.error("--view-agnostic trains the four projections' network: use --projection all")
    # All checked here, before any folder is created or any image decoded.
    if args.img_size < MIN_IMAGE_SIZE:
        parser.error(f"--img-size must be at least {MIN_IMAGE_SIZE}")
    if args.batch_size < 1 or args.epochs < 1:
        parser.error("--batch-size and --epochs must be positive")
    if args.learning_rate is not None and not (
        math.isfinite(args.learning_rate) and args.learning_rate > 0
    ):
        parser.error(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    try:
        check_cardinality(args.cardinality)
    except ValueError as error:
        parser.error(f"--cardinality: {error}")
    if not 0.0 <= args.bn_momentum < 1.0:
        parser.error(f"--bn-momentum must be in [0, 1), got {args.bn_momentum}")
    if args.allow_changes and not args.resume:
        parser.error("--allow-changes only makes sense with --resume")
    return args


def resolved_learning_rate(optimizer: str, learning_rate: float | None) -> float:
    """The rate given, else the default of the optimizer (0.01 for SGD, 0.001 otherwise)."""
    if learning_rate is not None:
        return learning_rate
    return 0.01 if optimizer.startswith("sgd") else 0.001


def resolved_settings(args: argparse.Namespace, projection: str, replicas: int) -> dict:
    """The settings that define a run, as training_config.json records them.

    A resumed run must have the same ones (``setting_differences``).
    """
    return {
        "projection": projection,
        "classes": list(CLASSES),
        "image_size": [args.img_size, args.img_size],
        "batch_size_per_replica": args.batch_size,
        "replicas": replicas,
        "epochs": args.epochs,
        "optimizer": args.optimizer,
        "learning_rate": resolved_learning_rate(args.optimizer, args.learning_rate),
        "lr_schedule": args.lr_schedule,
        "seed": args.seed,
        "mixed_precision": args.mixed_precision,
        "class_weights": args.class_weights,
        "targets": args.targets,
        "augmentation": not args.no_augmentation,
        "photometric_augmentation": args.photometric_augmentation,
        "cardinality": args.cardinality,
        "bn_momentum": args.bn_momentum,
        "data_root": [str(root) for root in args.data_root]
        if len(args.data_root) > 1
        else str(args.data_root[0]),
        # As given, a relative data root means another folder in another working
        # directory: the absolute paths say which data the run really used.
        "data_root_resolved": [str(root.resolve()) for root in args.data_root],
        **({"view_agnostic": True, "trained_on": list(PROJECTIONS)} if args.view_agnostic else {}),
    }


def setting_differences(saved: dict, settings: dict) -> dict[str, tuple]:
    """setting -> (saved value, new value) for every setting that changed.

    Keys of ``saved`` that are not settings (image counts, library versions)
    are ignored; ``data_root`` and ``data_root_resolved`` are compared as
    resolved paths; a setting of ``UNKNOWN_WHEN_NOT_RECORDED`` that ``saved``
    lacks (a run recorded before it was) is not a difference.
    """
    differences = {}
    for key, value in settings.items():
        if key in UNKNOWN_WHEN_NOT_RECORDED and key not in saved:
            continue
        before = saved.get(key, SETTINGS_BEFORE_THEY_WERE_RECORDED.get(key))
        same = (
            before is not None and _resolved_roots(before) == _resolved_roots(value)
            if key in ("data_root", "data_root_resolved")
            else before == value
        )
        if not same:
            differences[key] = (before, value)
    return differences


def _resolved_roots(value) -> list[Path] | None:
    try:
        return [Path(root).resolve() for root in ([value] if isinstance(value, str) else value)]
    except TypeError:  # a hand-edited configuration: not paths, so never equal to the new ones
        return None


def describe_differences(differences: dict[str, tuple]) -> str:
    """One line per setting, ``setting: saved -> now``; data fingerprints in short."""
    lines = []
    for key, (old, new) in differences.items():
        if key == "data_fingerprint":
            lines.append(f"{key}: {_describe_fingerprint(old)} -> {_describe_fingerprint(new)}")
        else:
            lines.append(f"{key}: {old!r} -> {new!r}")
    text = "\n  ".join(lines)
    if differences.keys() & {"data_root", "data_root_resolved", "data_fingerprint"}:
        text += (
            "\n(the images may not be the run's: check --data-root; a relative --data-root "
            f"is resolved from the working directory, now {Path.cwd()})"
        )
    return text


def _describe_fingerprint(fingerprint) -> str:
    if not isinstance(fingerprint, dict):
        return repr(fingerprint)
    return ", ".join(
        f"{split} {part.get('files')} files (names {str(part.get('names_sha256'))[:12]})"
        if isinstance(part, dict)
        else f"{split} {part!r}"
        for split, part in fingerprint.items()
    )


def read_saved_config(folder: Path) -> dict | None:
    """The run's training_config.json as a dict, or None if it has none.

    Raises:
        DatasetError: the file is unreadable, not JSON (a truncated write, an
            edit gone wrong) or not a JSON object; the message says what to do.
    """
    path = folder / CONFIG_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError, UnicodeDecodeError
        reason = str(error) or type(error).__name__
    else:
        if isinstance(saved, dict):
            return saved
        reason = f"it holds a JSON {type(saved).__name__}, not an object"
    raise DatasetError(
        f"{path}: not a readable training configuration ({reason}). It records the settings "
        f"of the run in {folder}, which --resume compares with the ones given now: restore it "
        "from a copy, or delete it and pass --resume --allow-changes to continue with the "
        "settings given now; or move the folder away and train again"
    )


def make_optimizer(name: str, learning_rate: float | None, decay_steps: int | None = None):
    """The optimizer; with decay_steps, its rate follows a cosine decay over that many steps."""
    learning_rate = resolved_learning_rate(name, learning_rate)
    if decay_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps, alpha=0.01
        )
    if name == "sgd":
        # The reference compiled with optimizer='sgd': Keras' plain SGD at 0.01.
        # Its script also built SGD(nesterov=True) and RMSprop objects that were
        # never passed to compile(); they are offered here as options.
        return keras.optimizers.SGD(learning_rate)
    if name == "sgd-nesterov":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    return keras.optimizers.Adam(learning_rate)


def prepare_model_dir(folder: Path, resume: bool) -> str:
    """'fresh', 'resume' or 'finished'; never silently reuse a folder with results."""
    if (folder / BACKUP_FOLDER).is_dir():
        if resume:
            return "resume"
        raise DatasetError(
            f"{folder} holds an interrupted run; pass --resume to continue it, or move the folder away"
        )
    if (folder / FINAL_WEIGHTS).exists():
        if resume:
            return "finished"
        raise DatasetError(
            f"{folder} already holds a trained model; choose another --models-root or move it away"
        )
    leftovers = (
        [p.name for p in folder.glob("*") if p.name not in ("logs", LOCK_FILE)]
        if folder.is_dir()
        else []
    )
    first_epoch_only = leftovers and not list(folder.glob("weights-improvement-*"))
    if resume and first_epoch_only:
        # Killed during its first epoch: nothing was saved that could be resumed.
        print(f"{folder}: no completed epoch to resume from; starting from epoch 1.")
        return "fresh"
    if first_epoch_only and (folder / CONFIG_FILE).exists():
        raise DatasetError(
            f"{folder} holds a run that stopped before its first epoch ended "
            f"({', '.join(sorted(leftovers)[:5])}); pass --resume to start it again there, "
            "or choose another --models-root"
        )
    if leftovers:
        raise DatasetError(
            f"{folder} is not empty ({', '.join(sorted(leftovers)[:5])}); "
            "choose another --models-root or move it away"
        )
    return "fresh"


def train_projection(projection: str, args: argparse.Namespace, strategy) -> Path | None:
    folder = model_dir(args.models_root, projection)
    created = not folder.exists()
    try:
        # The folder is held for the whole run: two runs started into it would
        # otherwise both pass the checks below and mix their checkpoints and history.
        with hold_folder(folder, "model folder"):
            return _train_in_held_folder(projection, folder, args, strategy)
    finally:
        # A run refused or stopped before writing anything leaves no empty folder.
        if created and folder.is_dir() and not any(folder.iterdir()):
            with contextlib.suppress(OSError):  # another run may just have taken it
                folder.rmdir()


def _finished_run(projection: str, folder: Path, settings: dict, args) -> Path:
    """--resume of a finished run: nothing to train; refused if the settings changed.

    A finished run is never trained further, so changed settings (more epochs,
    say) would silently be ignored: they are refused unless --allow-changes,
    which here only means "leave the finished model as it is and go on".
    """
    final = folder / FINAL_WEIGHTS
    saved = read_saved_config(folder)
    differences = {} if saved is None else setting_differences(saved, settings)
    if differences and not args.allow_changes:
        raise DatasetError(
            f"{folder} holds a finished run ({FINAL_WEIGHTS} exists), trained with other "
            f"settings than these (saved -> now):\n  {describe_differences(differences)}\n"
            "--resume only continues an interrupted run; a finished one is never trained "
            "further. To train with these settings, choose another --models-root (add "
            f"--init-from {args.models_root} to start from this model's weights); to leave "
            "this model as it is and go on with the other projections, pass --resume "
            "--allow-changes, or resume with the saved settings."
        )
    if differences:
        print(
            f"[{projection}] {final} exists: training finished with other settings "
            f"({', '.join(differences)}); the model is left as it is, nothing to resume."
        )
    else:
        print(f"[{projection}] {final} exists: training finished, nothing to resume.")
    return final


def _train_in_held_folder(
    projection: str, folder: Path, args: argparse.Namespace, strategy
) -> Path | None:
    state = prepare_model_dir(folder, args.resume)
    replicas = strategy.num_replicas_in_sync
    settings = resolved_settings(args, projection, replicas)
    if state == "finished":
        return _finished_run(projection, folder, settings, args)
    saved = None
    if state == "resume":
        saved = read_saved_config(folder)
        if saved is None and not args.allow_changes:
            raise DatasetError(
                f"{folder} holds an interrupted run but no {CONFIG_FILE}: the settings it was "
                "trained with are unknown, so --resume cannot check them. Pass --resume "
                "--allow-changes to continue it with the settings given now (recorded as "
                "changes from unknown), or move the folder away and train again"
            )
        # Compared now, before the images are decoded; the data fingerprint is
        # compared once the data are listed.
        differences = setting_differences(saved or {}, settings)
        if differences and not args.allow_changes:
            raise DatasetError(_resume_refusal(folder, differences))

    global_batch = args.batch_size * replicas
    size = (args.img_size, args.img_size)
    data = training_datasets(
        args.data_root[0] if len(args.data_root) == 1 else args.data_root,
        list(PROJECTIONS) if args.view_agnostic else projection,
        size,
        global_batch,
        seed=args.seed,
        augment=not args.no_augmentation,
        photometric=args.photometric_augmentation,
        targets=args.targets,
        cache=False if args.no_cache else None,  # None: cache when it fits CACHE_LIMIT_BYTES
    )
    settings["data_fingerprint"] = data_fingerprint(data)
    changes = []
    if state == "resume":
        differences = setting_differences(saved or {}, settings)
        if differences and not args.allow_changes:
            raise DatasetError(_resume_refusal(folder, differences))
        previous = (saved or {}).get("changes_on_resume", [])
        changes = (previous if isinstance(previous, list) else [previous]) + [
            {"setting": key, "before": old, "after": new} for key, (old, new) in differences.items()
        ]

    print(
        f"[{projection}] train {len(data.train_records)} images {data.class_counts('train')}, "
        f"validation {len(data.validation_records)} images {data.class_counts('validation')}; "
        f"{replicas} replica(s), global batch {global_batch}, "
        f"{data.steps_per_epoch} + {data.validation_steps} steps per epoch; "
        f"decoded images {'cached in memory' if data.cached else 'not cached'}"
    )

    with strategy.scope():
        model = build_resnet(
            args.img_size,
            num_classes=len(CLASSES),
            cardinality=args.cardinality,
            bn_momentum=args.bn_momentum,
        )
        if args.init_from is not None:
            source = best_checkpoint(model_dir(args.init_from, projection))
            if source is None and (model_dir(args.init_from, projection) / FINAL_WEIGHTS).is_file():
                source = model_dir(args.init_from, projection) / FINAL_WEIGHTS  # shipped models
            if source is None:
                raise SystemExit(
                    f"--init-from: no checkpoint in {model_dir(args.init_from, projection)}; "
                    "give the models root of a finished training run"
                )
            # Warm start: same layers, so the weights fit whatever the input size.
            initialise_weights(model, source)
            print(f"[{projection}] weights initialised from {source}")
        model.compile(
            optimizer=make_optimizer(
                args.optimizer,
                args.learning_rate,
                decay_steps=args.epochs * data.steps_per_epoch
                if args.lr_schedule == "cosine"
                else None,
            ),
            loss="categorical_crossentropy",
            # named 'acc' so that logs and file names read val_acc, as in the reference
            metrics=[keras.metrics.CategoricalAccuracy(name="acc")],
        )

    # Saves through a temporary file: a full disk or a kill never leaves a cut checkpoint.
    checkpoint = AtomicModelCheckpoint(
        str(folder / CHECKPOINT_PATTERN),
        monitor="val_acc",
        mode="max",
        save_best_only=True,
        verbose=1,
    )
    plateau = None
    if args.lr_schedule == "plateau":
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.1, patience=15, min_lr=0.001, verbose=1
        )
    callbacks = [
        # First: a NaN or infinite loss ends fit() before any callback below saves anything.
        StopOnNonFiniteLoss(),
        checkpoint,
        *([plateau] if plateau else []),
        keras.callbacks.TensorBoard(log_dir=str(folder / "logs" / time.strftime("%Y%m%d-%H%M%S"))),
        HistoryRecorder(folder, checkpoint=checkpoint),
        # Last: it saves model + optimizer state after every other callback has
        # run, so a resumed run starts from a fully recorded epoch.
        # double_checkpoint keeps the previous backup: a kill during the save
        # falls back to it instead of leaving a half-written, unreadable state.
        # The backup is deleted here, after the final model and curves are
        # written (not by Keras at the end of fit): if writing them fails, --resume
        # restores the last epoch and writes them then, instead of losing the run.
        keras.callbacks.BackupAndRestore(
            str(folder / BACKUP_FOLDER), double_checkpoint=True, delete_checkpoint=False
        ),
    ]
    config = {
        **settings,
        "initialised_from": None if args.init_from is None else str(args.init_from.resolve()),
        "cached": data.cached,
        "train_images": len(data.train_records),
        "validation_images": len(data.validation_records),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        **({"changes_on_resume": changes} if changes else {}),
    }
    started = time.perf_counter()
    try:
        save_config(folder, config)
        model.fit(
            data.train,
            epochs=args.epochs,
            steps_per_epoch=data.steps_per_epoch,
            validation_data=data.validation,
            class_weight=class_weights(data.train_records) if args.class_weights else None,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles (Keras cannot shuffle a Dataset)
            # Progress bars on a terminal; in a log file only the recorder's one-line summaries.
            verbose=1 if sys.stdout.isatty() else 0,
        )
        final = save_model(model, folder / FINAL_WEIGHTS)
        curves = plot_curves(folder)
        shutil.rmtree(folder / BACKUP_FOLDER, ignore_errors=True)
    except TrainingDiverged as error:
        rate = settings["learning_rate"]
        lower = f"--learning-rate {rate / 10:g}"
        if (folder / BACKUP_FOLDER).is_dir():  # earlier epochs were finite and backed up
            next_step = (
                f"continue from the last finite epoch with --resume --allow-changes {lower}, "
                f"or start again in another --models-root"
            )
        else:
            next_step = f"no epoch was completed: run again with --resume {lower}"
        raise TrainingDiverged(
            f"[{projection}] training diverged: {error} with learning rate {rate:g}; try a "
            f"lower --learning-rate (e.g. {rate / 10:g}). Nothing of the diverged model was "
            f"saved in {folder}; {next_step}."
        ) from error
    except OSError as error:
        # A full disk, a quota, a folder made read-only during the run: every
        # output is written through a temporary file, so nothing cut is left.
        where = f" ({error.filename})" if error.filename else ""
        raise DatasetError(
            f"[{projection}] cannot write in the model folder {folder}: "
            f"{error.strerror or error}{where}. No half-written file was left there and the "
            "completed epochs are kept: free some space (or make the folder writable), then run "
            "the same command with --resume to continue."
        ) from error
    print(
        f"[{projection}] done in {time.perf_counter() - started:.0f} s: {final}, {curves}, "
        f"history txt files and TensorBoard logs in {folder}"
    )
    return final


def _resume_refusal(folder: Path, differences: dict[str, tuple]) -> str:
    return (
        f"{folder} was trained with other settings than these (saved -> now):\n  "
        f"{describe_differences(differences)}\nResume with the saved settings, or pass "
        "--resume --allow-changes to continue with the new ones (both are then recorded in "
        f"{CONFIG_FILE})."
    )


def initialise_weights(model: keras.Model, source: Path) -> None:
    """Copy the weights of the model file ``source`` into ``model`` (--init-from).

    Raises:
        DatasetError: naming the file, when it cannot be loaded (truncated,
            not a Keras file, a Lambda layer) or its weights do not fit ``model``.
    """
    # Checked and loaded in Keras' safe mode: a model file can carry code.
    donor = load_keras_file(source)
    theirs = [tuple(w.shape) for w in donor.weights]
    ours = [tuple(w.shape) for w in model.weights]
    if theirs != ours:
        if len(theirs) != len(ours):
            detail = f"it has {len(theirs)} weight arrays, this network {len(ours)}"
        else:
            index = next(i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b)
            detail = (
                f"weight array {index + 1} ({model.weights[index].path}) is {theirs[index]} "
                f"there, {ours[index]} here"
            )
        raise DatasetError(
            f"--init-from: {source} does not fit the network being trained ({detail}); give "
            "the models root of a run of this network (same --cardinality, 4 classes), or "
            "train without --init-from"
        )
    model.set_weights(donor.get_weights())


def copy_view_agnostic_model(source: Path, target: Path) -> None:
    """The one view-agnostic network, written to another projection's model folder.

    Everything but the TensorBoard logs and the resume backup is copied; the
    configuration names the folder's projection (stages 2-4 check it) and says
    the network was trained on all of them.
    """
    if target.exists() and any(target.iterdir()):
        raise DatasetError(f"{target} is not empty; choose another --models-root or move it away")
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in source.iterdir():
        # Hidden files are the run's lock and temporary files, not outputs.
        if path.is_file() and path.name != CONFIG_FILE and not path.name.startswith("."):
            shutil.copy2(path, staging / path.name)
    config = json.loads((source / CONFIG_FILE).read_text())
    config["projection"] = target.name.removesuffix("_model")
    save_config(staging, config)
    if target.exists():
        target.rmdir()
    staging.rename(target)
    print(f"[{config['projection']}] the view-agnostic network copied to {target}")


def main(argv=None) -> int:
    args = parse_arguments(argv)
    try:
        check_writable(args.models_root, "models folder")
    except UnwritableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # The strategy comes first: splitting the CPU must precede any TF device use.
    strategy = choose_strategy(args.cpu_replicas)
    if args.mixed_precision:
        on_gpu = bool(tf.config.list_logical_devices("GPU"))
        keras.mixed_precision.set_global_policy("mixed_float16" if on_gpu else "mixed_bfloat16")
    keras.utils.set_random_seed(args.seed)
    projections = PROJECTIONS if args.projection == "all" else (args.projection,)
    try:
        if args.view_agnostic:
            final = train_projection(PROJECTIONS[0], args, strategy)
            for projection in PROJECTIONS[1:]:
                target = model_dir(args.models_root, projection)
                if not (args.resume and (target / FINAL_WEIGHTS).is_file()):
                    copy_view_agnostic_model(final.parent, target)
        else:
            for projection in projections:
                train_projection(projection, args, strategy)
    except (DatasetError, FolderBusyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    print(json.dumps({"trained": list(projections), "models_root": str(args.models_root)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
