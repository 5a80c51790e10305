"""Generate synthetic mammography phantoms with dense-tissue masks.

The reference tutorial trained on a private dataset; this script makes a
dataset anyone can use, in the same folder layout, labelled with BI-RADS
density classes A-D and with a ground-truth mask of the dense tissue for every
image (so Grad-CAM maps can be scored against it).

Example (about 30 s on 2 cores)::

    python Make_Phantoms.py --out ../data/phantoms --subjects 40 10 10 --size 650 520 --seed 1

writes ``../data/phantoms/TrainingSet/<PROJ>/train/<CLASS>/<subject>_<CLASS>_<PROJ>.png``
(and ValidationSet/, TestSet/), the masks in a parallel tree under
``DenseMasks/`` (255 = dense tissue) and ``manifest.csv`` (one row per image:
file, subject, projection, split, class, percent density, parameters, seed).

With ``--raw`` the same phantoms are written as a scanner would store them, for
testing stage 0 (``Preprocess_Mammograms.py``): 16-bit DICOMs (VOI windows incl.
SIGMOID, VOI LUTs, MONOCHROME1/2, flips, burned-in markers, bright pectoral
muscle) in ``RawDICOM/``, true breast/pectoral masks and the preprocessed form
in ``RawTruth/``, ``raw_labels.csv`` (the ``csv`` label format) and
``raw_manifest.csv``; 4 images per subject, no splits::

    python Make_Phantoms.py --raw --out ../data/raw_phantoms --subjects 10 0 0 --size 320 256 --seed 1
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from breastdensity.conventions import DENSE_MASKS, MIN_IMAGE_SIZE
from breastdensity.files import UnwritableError

# The class mixes of breastdensity.data.phantoms.PREVALENCE, named here so that --help
# needs no import of the generator.
PREVALENCES = ("balanced", "screening")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Every subject gives 4 images (CC_R, CC_L, MLO_R, MLO_L) with one class.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--subjects",
        nargs=3,
        type=int,
        required=True,
        metavar=("TRAIN", "VAL", "TEST"),
        help="number of subjects per split (0 skips a split)",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=(650, 520),
        metavar=("HEIGHT", "WIDTH"),
        help="image size in pixels (default: 650 520)",
    )
    parser.add_argument("--seed", type=int, required=True, help="the dataset is fixed by the seed")
    parser.add_argument(
        "--prevalence",
        choices=PREVALENCES,
        default="balanced",
        help="class mix: balanced (default) or screening (10/40/40/10 %% for A/B/C/D)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel processes (default: all cores)",
    )
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        metavar="PD_POINTS",
        help="simulate reader variability: labels come from PD plus Gaussian noise of this "
        "standard deviation, so neighbouring classes overlap (default 0: clean labels)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset this script generated in --out: deletes only the files its "
        "manifest.csv (raw_manifest.csv with --raw) lists, and nothing at all if the dataset "
        "folders hold anything else",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="write raw 16-bit DICOM phantoms with true masks (stage-0 ground truth) instead",
    )
    parser.add_argument(
        "--preview", type=Path, help="also save a classes x projections figure to this PNG"
    )
    args = parser.parse_args(argv)
    # Checked here, before any folder exists, so that the message names the flag.
    if min(args.size) < MIN_IMAGE_SIZE:
        parser.error(
            f"--size must be at least {MIN_IMAGE_SIZE} {MIN_IMAGE_SIZE} (training needs it)"
        )
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if min(args.subjects) < 0 or sum(args.subjects) == 0:
        parser.error(
            f"--subjects must be >= 0 and not all 0, got {' '.join(map(str, args.subjects))}"
        )
    if not math.isfinite(args.label_noise) or args.label_noise < 0:
        parser.error("--label-noise must be a finite number >= 0")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def _reason(error: OSError) -> str:
    return f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")


def main(argv=None) -> int:
    args = parse_arguments(argv)
    # Imported once the arguments are checked, so that --help and argument errors are
    # instant. None of them loads TensorFlow: making phantoms needs none.
    from breastdensity.data.phantom_plots import plot_examples
    from breastdensity.data.phantoms import MANIFEST_NAME, generate_dataset
    from breastdensity.data.raw_phantoms import write_raw_phantoms

    started = time.perf_counter()
    if args.raw:
        images = 4 * sum(args.subjects)
        try:
            manifest = write_raw_phantoms(
                args.out, images, args.seed, tuple(args.size), overwrite=args.overwrite
            )
        except (ValueError, FileExistsError, UnwritableError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OSError as error:
            print(
                f"error: cannot write the raw phantoms in {args.out}: {_reason(error)}; the files "
                "of this run were removed again: free some space or make the folder writable, "
                "then run again",
                file=sys.stderr,
            )
            return 2
        print(f"{images} raw DICOM phantoms in {time.perf_counter() - started:.1f} s; {manifest}")
        return 0
    try:
        manifest = generate_dataset(
            args.out,
            tuple(args.subjects),
            tuple(args.size),
            args.seed,
            prevalence=args.prevalence,
            workers=args.workers,
            label_noise=args.label_noise,
            overwrite=args.overwrite,
            progress=True,
        )
    except (ValueError, FileExistsError, UnwritableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"error: cannot write the dataset in {args.out}: {_reason(error)}; the images written "
            f"so far are in no {MANIFEST_NAME}, so --overwrite will not delete them: free some "
            "space (or make the folder writable), move TrainingSet/ ValidationSet/ TestSet/ "
            f"{DENSE_MASKS}/ out of {args.out}, then run again",
            file=sys.stderr,
        )
        return 2
    images = 4 * sum(args.subjects)
    elapsed = time.perf_counter() - started
    print(
        f"{images} images in {elapsed:.1f} s ({images / elapsed:.1f} images/s); manifest: {manifest}"
    )
    if args.preview:
        print(f"preview: {plot_examples(args.out, args.preview)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
