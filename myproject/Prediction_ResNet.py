"""Stage 2: predict a test folder with a trained model -> Prediction/predictions_<proj>.txt.

For each projection, every image under ``<test-root>/<PROJ>/test/<CLASS>/`` is
preprocessed exactly as in training (``breastdensity.preprocessing``) and
classified. Rows follow the reference's order: class folder A -> D, then file
name sorted. Outputs, in ``--output-dir``:

* ``predictions_<ccr|ccl|mlor|mlol>.txt`` - N x 4 probabilities (A B C D),
  numpy.savetxt, the reference's format;
* ``predictions_<...>.csv`` - the same rows with
  ``filename,subject,projection,true_label,predicted_label,A,B,C,D``, so that
  the next stage aligns projections by subject, not by row position, and the
  provenance ``model,model_sha256,model_projection``, so that it can refuse to
  fuse projections predicted by different model sets.

The models may be of any backbone of ``breastdensity.backbones`` (the reference
ResNet, EfficientNet, ViT): the image size is read from each model file.

A model whose ``training_config.json`` names another projection is refused
(``--allow-projection-mismatch`` to apply it anyway), and so are probabilities
that are not finite (a diverged model).

Examples, from myproject/ (seconds on a CPU for the shipped example)::

    python Prediction_ResNet.py --projection all
    python Prediction_ResNet.py --projection CC_R --model CC_R_model/final_weights.keras \\
        --test-root ../data/phantoms/TestSet --output-dir ../runs/Prediction

Images without labels (stage 0's ``OUT/Unlabelled/<PROJ>/`` tree, or a flat folder
of ``<subject>_<PROJ>.png``): ``--images DIR``; ``true_label`` is left empty and
no accuracy is computed::

    python Prediction_ResNet.py --projection all --images ../runs/stage0_real \\
        --output-dir ../runs/Prediction_real
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from breastdensity.conventions import (
    CLASSES,
    PROJECTIONS,
    DatasetError,
    default_model_path,
    list_class_images,
    list_unlabelled_images,
    projection_test_folder,
)
from breastdensity.files import UnwritableError, check_writable
from breastdensity.predictions import (
    check_probabilities,
    model_provenance,
    predictions_table,
    write_predictions,
)
from breastdensity.quiet import quiet_tensorflow


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Predict density classes for a test folder, one model per projection.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--projection", required=True, choices=[*PROJECTIONS, "all"], help="projection to predict"
    )
    parser.add_argument("--models-root", type=Path, default=Path("."), help="holds <PROJ>_model/")
    parser.add_argument(
        "--model",
        type=Path,
        help="a .keras model file (single projection only); default: the best checkpoint in "
        "<PROJ>_model/ by validation accuracy, else final_weights.keras",
    )
    parser.add_argument(
        "--test-root",
        type=Path,
        default=Path("TestSet"),
        help="images in <test-root>/<PROJ>/test/<CLASS>/",
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="predict unlabelled images instead: a stage-0 output, its Unlabelled/ folder, or a "
        "flat folder of <subject>_<PROJ>.png (true_label left empty)",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("Prediction"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--allow-projection-mismatch",
        action="store_true",
        help="apply a model to another projection than the one its training_config.json "
        "names (normally a mistake, refused without this flag)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable images (listed in the summary) instead of stopping",
    )
    args = parser.parse_args(argv)
    if args.model is not None and args.projection == "all":
        parser.error("--model needs a single --projection (each projection has its own model)")
    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    return args


def predict_projection(projection: str, args: argparse.Namespace):
    # imported here, not at the top: TensorFlow loads only once the arguments are parsed
    from breastdensity.inference import check_projection_match, load_model, predict_records

    if args.images is not None:
        records = list_unlabelled_images(args.images, projection)
        if not records:
            return None
    else:
        records = list_class_images(
            projection_test_folder(args.test_root, projection), what=f"{projection} test"
        )
    model_path = args.model or default_model_path(args.models_root, projection)
    model = load_model(model_path)
    trained_on = check_projection_match(
        model_path, records, projection, args.allow_projection_mismatch
    )
    started = time.perf_counter()
    result = predict_records(model, records, batch_size=args.batch_size, skip_bad=args.skip_bad)
    seconds = time.perf_counter() - started
    if not result.records:
        raise DatasetError(f"no readable {projection} image in {args.images or args.test_root}")
    check_probabilities(
        result.probabilities,
        f"the model {model_path}",
        [record.path.name for record in result.records],
        hint="; is it a diverged training run? Retrain it with a lower --learning-rate",
    )
    provenance = model_provenance(model_path, args.output_dir, trained_on)
    table = predictions_table(result.records, projection, result.probabilities, provenance)
    return table, result, model_path, seconds


def summary(projection, table, result, model_path, seconds) -> str:
    if (table["true_label"] == "").all():  # --images: nothing to compare with
        predicted = table["predicted_label"].value_counts().reindex(list(CLASSES), fill_value=0)
        lines = [
            f"[{projection}] {len(table)} unlabelled images with {model_path} in {seconds:.1f} s; "
            f"predicted {', '.join(f'{c}: {n}' for c, n in predicted.items())} "
            "(no true labels: accuracy not computed)"
        ]
    else:
        counts = table["true_label"].value_counts().reindex(list(CLASSES), fill_value=0)
        accuracy = (table["true_label"] == table["predicted_label"]).mean()
        lines = [
            f"[{projection}] {len(table)} images ({', '.join(f'{c}: {n}' for c, n in counts.items())}) "
            f"with {model_path} in {seconds:.1f} s; accuracy {accuracy:.3f}"
        ]
    for path, reason in result.skipped:
        lines.append(f"[{projection}] skipped {path}: {reason}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_arguments(argv)  # --help and wrong arguments answer before TensorFlow loads
    quiet_tensorflow()
    try:
        check_writable(args.output_dir, "prediction folder")  # before hours of predicting
    except UnwritableError as error:
        print(f"error: {error}\nNothing was predicted.", file=sys.stderr)
        return 2

    projections = PROJECTIONS if args.projection == "all" else (args.projection,)
    tables, reports, skipped = {}, [], 0
    try:
        for projection in projections:
            # Ignored files (.DS_Store, notes ...) are reported, not fatal.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    predicted = predict_projection(projection, args)
                finally:
                    for warning in caught:
                        print(f"warning: {warning.message}", file=sys.stderr)
            if predicted is None:  # --images without this projection
                reports.append(f"[{projection}] no image in {args.images}; skipped")
                continue
            table, result, model_path, seconds = predicted
            tables[projection] = table
            reports.append(summary(projection, table, result, model_path, seconds))
            skipped += len(result.skipped)
    except DatasetError as error:
        print(f"error: {error}\nNo prediction file was written.", file=sys.stderr)
        return 2
    if not tables:
        print(f"error: no image of {', '.join(projections)} in {args.images}", file=sys.stderr)
        return 2
    # All projections succeeded: only now are the files written (atomically).
    try:
        written = write_predictions(args.output_dir, tables)
    except OSError as error:
        print(
            f"error: cannot write the predictions to {args.output_dir} ({error}); the files "
            "there are unchanged: free some space or choose another --output-dir",
            file=sys.stderr,
        )
        return 2
    print("\n".join(reports))
    if skipped:
        print(f"{skipped} unreadable file(s) skipped (--skip-bad).")
    print(f"Wrote {len(written)} files to {args.output_dir}/: {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
