"""Stage 1: train one breast-density classifier per mammographic projection.

The reference tutorial's recipe, read top-down in ``train`` below: the images of
one projection, augmented; the residual CNN of ``breastdensity.network``; plain
SGD on the categorical cross-entropy; the learning rate cut tenfold when the
validation loss stops falling; the best model by validation accuracy kept. Each
projection's model goes to its own folder, ``<models-root>/<PROJ>_model/``.

Examples, from myproject/::

    # on a CPU, in minutes: phantoms (Make_Phantoms.py), then the four projections at 64 px
    python Make_Phantoms.py --out ../runs/cpu/data --subjects 200 40 20 --size 96 80 --seed 2026
    python Train_ResNet.py --projection all --data-root ../runs/cpu/data \\
        --models-root ../runs/cpu/models --img-size 64 --batch-size 16 --epochs 15 \\
        --optimizer adam --lr-schedule cosine

    # the reference's settings (650 px, batch 4, 100 epochs, SGD 0.01): hours per
    # projection on a GPU, all of the node's; here on the phantoms above, normally
    # on your own images (Preprocess_Mammograms.py)
    python Train_ResNet.py --projection CC_R --data-root ../runs/cpu/data \\
        --models-root ../runs/reference

    # a run that was killed (a crash, a pre-empted job) continues with the same
    # command plus --resume, from its last completed epoch
    python Train_ResNet.py --projection CC_R --data-root ../runs/cpu/data \\
        --models-root ../runs/reference --resume

    # another network (breastdensity.backbones), with the thesis' schedule and early
    # stopping: EfficientNet-B0 at 224 px, or ViT-B/32 (--backbone vit), or a small ViT
    # that trains on a CPU (--backbone vit-tiny, 128 px)
    python Train_ResNet.py --projection CC_R --data-root ../runs/cpu/data \\
        --models-root ../runs/efficientnet --backbone efficientnet --optimizer adam \\
        --lr-schedule cosine-restarts --early-stopping 50

Exit status: 0 done; 2 bad arguments, data or model folder (one in use by another
run, a disk that fills up: the completed epochs are kept for --resume); 3 the loss
became NaN or infinite (lower --learning-rate).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from breastdensity.conventions import (
    BACKBONE_IMAGE_SIZES,
    CLASSES,
    FINAL_WEIGHTS,
    MIN_IMAGE_SIZE,
    PROJECTIONS,
    VIT_PATCH_SIZES,
    DatasetError,
    model_dir,
)
from breastdensity.files import FolderBusyError, UnwritableError, check_writable
from breastdensity.quiet import quiet_tensorflow
from breastdensity.run_folder import RunFolder, copy_run, warm_start_source

# ----------------------------------------------------------------------------
# Defaults: the reference's settings (each can be changed by the flag named)
# ----------------------------------------------------------------------------
BACKBONE = "resnet"  # --backbone: the reference's residual CNN (breastdensity.network)
# --img-size: the network sees (650, 650, 3) images; other backbones their own size
IMG_SIZE = BACKBONE_IMAGE_SIZES[BACKBONE]
BATCH_SIZE = 4  # --batch-size: images per batch on each device (GPU)
EPOCHS = 100  # --epochs
OPTIMIZERS = ("sgd", "sgd-nesterov", "rmsprop", "adam")  # --optimizer's choices
OPTIMIZER = "sgd"  # Keras' plain SGD, no momentum
SGD_LEARNING_RATE = 0.01  # --learning-rate of SGD (Keras' default, the reference's)
ADAPTIVE_LEARNING_RATE = 0.001  # --learning-rate of RMSprop and Adam (Keras' defaults)
LR_SCHEDULE = "plateau"  # --lr-schedule: ReduceLROnPlateau on the validation loss
LR_SCHEDULES = ("plateau", "cosine", "cosine-restarts")  # --lr-schedule's choices
EARLY_STOPPING_MIN_DELTA = 1e-4  # --early-stopping: the thesis' smallest gain in val precision
SEED = 1  # --seed: initial weights, shuffling and augmentation
CARDINALITY = 1  # --cardinality: groups of the 3x3 convolutions; 1 is a plain ResNet
# --bn-momentum: batch normalization's moving averages. The reference's 0.99 (Keras'
# default) lags behind the weights on a run of a few hundred steps; on long runs
# the two agree. Same value as breastdensity.network.BN_MOMENTUM.
BN_MOMENTUM = 0.9
# Not flags: the loss (categorical cross-entropy), the schedule's numbers (x 0.1 after
# 15 epochs without a lower validation loss, down to 0.001), the checkpoint kept (the
# best validation accuracy), and the outputs: all in ``train`` below.


def train(run: RunFolder, args: argparse.Namespace, strategy) -> Path:
    """Train one projection's network into ``run.folder``; the path of the final model.

    ``args`` are the parsed flags, ``strategy`` the devices (``training.choose_strategy``).
    """
    import keras
    import tensorflow as tf

    from breastdensity import backbones, training

    # -- Data ------------------------------------------------------------------
    # Augmentation of the training images, a batch (B, H, W, 1) of gray levels 0-255
    # at a time: the reference's random rotation (+-10 degrees), zoom and shifts (20 %),
    # no flips; --photometric-augmentation adds gamma, contrast, blur and noise.
    augment = training.make_augmentation(
        args.seed,
        geometric=not args.no_augmentation,
        photometric=args.photometric_augmentation,
    )
    # Batches of (global_batch, size, size, 3) float32 images and (global_batch, 4)
    # targets; the training set shuffled, augmented and repeated, the validation set as is.
    global_batch = args.batch_size * strategy.num_replicas_in_sync
    data = training.training_datasets(
        args.data_root[0] if len(args.data_root) == 1 else args.data_root,
        list(PROJECTIONS) if args.view_agnostic else run.projection,
        (args.img_size, args.img_size),
        global_batch,
        seed=args.seed,
        augment=augment,
        targets=args.targets,  # onehot, or ordinal: some weight on the neighbouring classes
        cache=False if args.no_cache else None,  # None: cached when it fits in memory
    )
    run.check_data(training.data_fingerprint(data))  # --resume: the same images as before
    print(f"[{run.projection}] {data.describe(strategy.num_replicas_in_sync, global_batch)}")

    # -- Model -----------------------------------------------------------------
    with strategy.scope():  # the weights live on every device
        # (None, size, size, 3) images -> (None, 4) probabilities of A, B, C, D; the
        # reference ResNet unless --backbone says otherwise
        model = backbones.build_backbone(
            args.backbone,
            args.img_size,
            num_classes=len(CLASSES),
            pretrained=args.pretrained,  # EfficientNet's ImageNet weights, or None
            **backbone_options(args),
        )
        if args.init_from is not None:  # another run's weights instead of random ones
            source = warm_start_source(args.init_from, run.projection)
            initialise_weights(model, source)
            print(f"[{run.projection}] weights initialised from {source}")

        # -- Compile (in the scope too: the optimizer's variables are mirrored) --
        learning_rate = args.learning_rate
        total_steps = args.epochs * data.steps_per_epoch
        if args.lr_schedule == "cosine":  # decays to 1 % of the rate over the whole run
            learning_rate = training.cosine_decay(learning_rate, total_steps)
        elif args.lr_schedule == "cosine-restarts":  # the thesis': cycles down to 1e-6
            learning_rate = training.cosine_restarts(learning_rate, total_steps)
        # named 'acc' so that logs and file names read val_acc, as in the reference
        metrics = [keras.metrics.CategoricalAccuracy(name="acc")]
        if args.early_stopping:  # the thesis stops on the validation precision
            metrics.append(keras.metrics.Precision(name="precision"))
        model.compile(
            optimizer=training.make_optimizer(args.optimizer, learning_rate),
            loss="categorical_crossentropy",
            metrics=metrics,
        )

    # -- Callbacks -------------------------------------------------------------
    # The best model so far by validation accuracy: weights-improvement-EE-A.AA.keras,
    # saved through a temporary file (a full disk or a kill never leaves a cut one).
    checkpoint = training.AtomicModelCheckpoint(
        run.checkpoints, monitor="val_acc", mode="max", save_best_only=True, verbose=1
    )
    # The reference's schedule: the rate x 0.1 once the validation loss has not fallen
    # for 15 epochs, down to 0.001 (with --lr-schedule cosine, the optimizer decays it).
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.1, patience=15, min_lr=0.001, verbose=1
    )
    # --early-stopping: the thesis' rule. Stop once the validation precision has not
    # risen by 1e-4 for PATIENCE epochs, and end with the weights of its best epoch
    # (final_weights.keras then holds those).
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_precision",
        mode="max",
        min_delta=EARLY_STOPPING_MIN_DELTA,
        patience=args.early_stopping or 0,
        restore_best_weights=True,
        verbose=1,
    )
    callbacks = [
        # First: a NaN or infinite loss ends fit() before any callback below saves anything.
        training.StopOnNonFiniteLoss(),
        checkpoint,
        *([plateau] if args.lr_schedule == "plateau" else []),
        *([early_stopping] if args.early_stopping else []),
        keras.callbacks.TensorBoard(log_dir=run.new_log_dir()),  # logs/<date>-<time>/
        # loss_train.txt, acc_train.txt, loss_val.txt, acc_val.txt and history.csv,
        # every epoch (continued, not restarted, by --resume)
        training.HistoryRecorder(run.folder, checkpoint=checkpoint),
        # Last: model and optimizer state after every epoch, for --resume. Two copies,
        # so that a kill while saving falls back to the previous one; kept after fit
        # until the final model is written (run.finish).
        keras.callbacks.BackupAndRestore(
            str(run.backup), double_checkpoint=True, delete_checkpoint=False
        ),
    ]

    # -- Fit -------------------------------------------------------------------
    # --class-weights: rare classes weigh more in the loss (unbalanced data)
    class_weight = training.class_weights(data.train_records) if args.class_weights else None
    started = time.perf_counter()
    with run.writing():  # a full disk: an error that says how to continue
        run.save_config(
            initialised_from=None if args.init_from is None else str(args.init_from.resolve()),
            cached=data.cached,
            train_images=len(data.train_records),
            validation_images=len(data.validation_records),
            tensorflow=tf.__version__,
            keras=keras.__version__,
        )
        try:
            model.fit(
                data.train,
                epochs=args.epochs,
                steps_per_epoch=data.steps_per_epoch,
                validation_data=data.validation,
                class_weight=class_weight,
                callbacks=callbacks,
                shuffle=False,  # the tf.data pipeline shuffles (Keras cannot shuffle a Dataset)
                # Progress bars on a terminal; in a log file, the recorder's one line per epoch.
                verbose=1 if sys.stdout.isatty() else 0,
            )
        except training.TrainingDiverged as error:
            raise training.TrainingDiverged(run.divergence_advice(error)) from error
        final = training.save_model(model, run.final_weights)
        curves = training.plot_curves(run.folder)  # training_curves.png
        run.finish()
    print(
        f"[{run.projection}] done in {time.perf_counter() - started:.0f} s: {final}, {curves}, "
        f"history txt files and TensorBoard logs in {run.folder}"
    )
    return final


# ----------------------------------------------------------------------------
# Around the recipe: one folder per projection, a warm start, the flags
# ----------------------------------------------------------------------------


def train_projection(projection: str, args: argparse.Namespace, strategy) -> Path:
    """Train ``projection`` into its model folder, unless it holds a finished run."""
    settings = resolved_settings(args, projection, strategy.num_replicas_in_sync)
    with RunFolder.open(
        args.models_root,
        projection,
        settings,
        resume=args.resume,
        allow_changes=args.allow_changes,
    ) as run:
        return run.final_weights if run.finished else train(run, args, strategy)


def initialise_weights(model, source: Path) -> None:
    """Copy the weights of the model file ``source`` into ``model`` (--init-from).

    Same layers, so the weights fit whatever the input size (the network ends in
    global average pooling).

    Raises:
        DatasetError: naming the file, when it cannot be loaded (truncated,
            not a Keras file, a Lambda layer) or its weights do not fit ``model``.
    """
    from breastdensity.inference import load_keras_file

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
            "the models root of a run of this network (same --backbone and --cardinality, 4 "
            "classes), or train without --init-from"
        )
    model.set_weights(donor.get_weights())


def backbone_options(args: argparse.Namespace) -> dict:
    """The flags that shape the chosen backbone (build_backbone's options)."""
    if args.backbone == "resnet":
        return {"cardinality": args.cardinality, "bn_momentum": args.bn_momentum}
    if args.backbone == "efficientnet":
        return {"variant": args.efficientnet_variant}
    return {}


def default_learning_rate(optimizer: str) -> float:
    return SGD_LEARNING_RATE if optimizer.startswith("sgd") else ADAPTIVE_LEARNING_RATE


def parse_arguments(argv=None) -> argparse.Namespace:
    """The flags, checked; ``learning_rate`` resolved to the optimizer's default if not given."""
    parser = argparse.ArgumentParser(
        description="Train the breast-density ResNet, one model per projection.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=(
            "Data layout: <data-root>/TrainingSet/<PROJ>/train/<CLASS>/*.png and "
            "<data-root>/ValidationSet/<PROJ>/validation/<CLASS>/*.png, classes A B C D. "
            "Outputs: <models-root>/<PROJ>_model/ with weights-improvement-EE-A.AA.keras, "
            "final_weights.keras, loss/acc txt files, history.csv, training_curves.png, "
            "training_config.json and logs/ for TensorBoard. "
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
        help="holds TrainingSet/ and ValidationSet/; several roots are trained on together, "
        "and a root without a projection's folders contributes nothing to it",
    )
    parser.add_argument(
        "--view-agnostic",
        action="store_true",
        help="with --projection all: train ONE network on the images of all four projections "
        "and write it to every <PROJ>_model/ (for data with some views only)",
    )
    parser.add_argument(
        "--models-root", type=Path, default=Path("."), help="receives <PROJ>_model/"
    )
    parser.add_argument(
        "--backbone",
        choices=tuple(BACKBONE_IMAGE_SIZES),
        default=BACKBONE,
        help="the network: resnet, the reference's residual CNN; efficientnet, keras.applications' "
        "EfficientNet (--efficientnet-variant); vit, ViT-B/32 (86 M parameters); vit-tiny, a "
        "4-block ViT that trains on a CPU. Stages 2-4 read what they need from the model file",
    )
    parser.add_argument(
        "--efficientnet-variant",
        choices=[f"B{size}" for size in range(8)],
        default="B0",
        help="with --backbone efficientnet: its size, B0 (4 M parameters) to B7",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="imagenet|FILE",
        help="with --backbone efficientnet: start its feature extractor from ImageNet weights, "
        "downloaded by Keras (Colab, a GPU node), or from FILE, the efficientnetb0_notop.h5 "
        "that Keras downloads, copied to a machine without internet",
    )
    parser.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="side of the square network input; default: "
        + ", ".join(f"{size} ({name})" for name, size in BACKBONE_IMAGE_SIZES.items())
        + "; a ViT needs a whole number of patches (32 px, 16 for vit-tiny)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help="images per batch on each device (global = x devices)",
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs")
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=OPTIMIZER,
        help="sgd: plain SGD, the reference's. sgd-nesterov: SGD with Nesterov momentum 0.9. "
        "rmsprop: RMSprop. adam: Adam, adaptive step sizes, little tuning",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help=f"> 0; default: {SGD_LEARNING_RATE} for SGD, {ADAPTIVE_LEARNING_RATE} otherwise. "
        "Training stops with exit status 3 at the first NaN or infinite loss (a rate too "
        "high), without saving that epoch",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=LR_SCHEDULE,
        help="plateau: the reference's ReduceLROnPlateau (val_loss, factor 0.1, patience 15, "
        "min_lr 0.001). cosine: decay smoothly to 1%% of the initial rate over the run; with "
        "few epochs it ends on stable weights where a constant rate keeps oscillating. "
        "cosine-restarts: the thesis' warm restarts, three cosine cycles down to 1e-6, each "
        "twice as long as the one before (1/7, 2/7, 4/7 of the run)",
    )
    parser.add_argument(
        "--early-stopping",
        type=int,
        default=None,
        metavar="PATIENCE",
        help="stop when the validation precision has not improved by 1e-4 for PATIENCE epochs "
        "and keep its best epoch's weights as final_weights.keras (the thesis: 50). With "
        "--resume the count starts again",
    )
    parser.add_argument(
        "--seed", type=int, default=SEED, help="seed of weights, shuffling and augmentation"
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="float16 compute on GPUs (bfloat16 on CPU), faster on GPUs with tensor cores",
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
        help="onehot: one class per image, the reference's. ordinal: soft targets that give "
        "the neighbouring classes some weight (for labels coarser than A-D, such as three "
        "density levels)",
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
        default=CARDINALITY,
        help="groups of the 3x3 convolutions (ResNeXt); 1: the reference's ResNet",
    )
    parser.add_argument(
        "--bn-momentum",
        type=float,
        default=BN_MOMENTUM,
        help="momentum of batch normalization's moving averages (the reference: 0.99)",
    )
    parser.add_argument(
        "--no-augmentation", action="store_true", help="train without the reference's augmentation"
    )
    parser.add_argument(
        "--photometric-augmentation",
        action="store_true",
        help="add gray-level augmentation (gamma, contrast, blur, noise; background kept) after "
        "the reference's geometric one: for models meant to meet real mammograms",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="MODELS_ROOT",
        help="start from the weights of the best checkpoint in MODELS_ROOT/<PROJ>_model/, else "
        "its final_weights.keras (any input size: the network ends in global average pooling) "
        "instead of random ones",
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
    if args.img_size is None:
        args.img_size = BACKBONE_IMAGE_SIZES[args.backbone]
    if args.backbone != "resnet" and args.cardinality != CARDINALITY:
        parser.error("--cardinality shapes the reference ResNet only (--backbone resnet)")
    if args.backbone != "efficientnet" and args.efficientnet_variant != "B0":
        parser.error("--efficientnet-variant needs --backbone efficientnet")
    if args.pretrained is not None:
        if args.backbone != "efficientnet":
            parser.error(
                f"--pretrained: there are no ImageNet weights for --backbone {args.backbone}; "
                "use --backbone efficientnet, or train without --pretrained"
            )
        if args.pretrained != "imagenet" and not Path(args.pretrained).is_file():
            parser.error(f"--pretrained: {args.pretrained} is neither 'imagenet' nor a file")
    patch = VIT_PATCH_SIZES.get(args.backbone)
    if patch and (args.img_size < patch or args.img_size % patch):
        parser.error(
            f"--img-size {args.img_size}: --backbone {args.backbone} cuts the image into "
            f"{patch}x{patch} patches; use a multiple of {patch}, e.g. "
            f"{BACKBONE_IMAGE_SIZES[args.backbone]}"
        )
    if args.early_stopping is not None and args.early_stopping < 1:
        parser.error("--early-stopping PATIENCE must be at least 1 epoch")
    if args.view_agnostic and args.projection != "all":
        parser.error("--view-agnostic trains the four projections' network: use --projection all")
    # All checked here, before any folder is created or any image decoded.
    if args.img_size < MIN_IMAGE_SIZE:
        parser.error(f"--img-size must be at least {MIN_IMAGE_SIZE}")
    if args.batch_size < 1 or args.epochs < 1:
        parser.error("--batch-size and --epochs must be positive")
    if args.learning_rate is None:
        args.learning_rate = default_learning_rate(args.optimizer)
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        parser.error(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.cardinality != CARDINALITY:
        # Which group counts fit is the network's to say (they must divide its widths);
        # asking it loads TensorFlow, so only for a cardinality other than the reference's.
        quiet_tensorflow()
        from breastdensity.network import check_cardinality

        try:
            check_cardinality(args.cardinality)
        except ValueError as error:
            parser.error(f"--cardinality: {error}")
    if not 0.0 <= args.bn_momentum < 1.0:
        parser.error(f"--bn-momentum must be in [0, 1), got {args.bn_momentum}")
    if args.allow_changes and not args.resume:
        parser.error("--allow-changes only makes sense with --resume")
    return args


def resolved_settings(args: argparse.Namespace, projection: str, replicas: int) -> dict:
    """The settings that define a run, as training_config.json records them.

    A resumed run must have the same ones (``run_folder.setting_differences``).
    """
    return {
        "projection": projection,
        "classes": list(CLASSES),
        "backbone": args.backbone,
        **(
            {"efficientnet_variant": args.efficientnet_variant}
            if args.backbone == "efficientnet"
            else {}
        ),
        # a file's path as given and resolved: the same file on resume
        "pretrained": args.pretrained
        if args.pretrained in (None, "imagenet")
        else str(Path(args.pretrained).resolve()),
        "early_stopping": args.early_stopping,
        "image_size": [args.img_size, args.img_size],
        "batch_size_per_replica": args.batch_size,
        "replicas": replicas,
        "epochs": args.epochs,
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
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


def main(argv=None) -> int:
    args = parse_arguments(argv)  # --help and bad flags end here, before TensorFlow loads
    try:
        check_writable(args.models_root, "models folder")
    except UnwritableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    quiet_tensorflow()
    import keras
    import tensorflow as tf

    from breastdensity.backbones import PretrainedWeightsError
    from breastdensity.training import TrainingDiverged, choose_strategy

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
                    copy_run(final.parent, target)
        else:
            for projection in projections:
                train_projection(projection, args, strategy)
    except (DatasetError, FolderBusyError, PretrainedWeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    print(json.dumps({"trained": list(projections), "models_root": str(args.models_root)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
