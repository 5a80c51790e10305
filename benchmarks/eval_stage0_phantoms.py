"""Stage 0 against ground truth: raw DICOM phantoms -> breast and pectoral Dice, orientation.

Each raw phantom (``breastdensity.data.raw_phantoms``: VOI windows incl. SIGMOID, VOI
LUTs, FOR PROCESSING signal, MONOCHROME1/2, flips, burned-in markers, bright
pectoral muscle) is written as a DICOM, read back and put through stage 0; its
masks are compared with the true ones in the output frame, and its image with
the generator's preprocessed form (mean absolute difference in 8-bit gray levels
inside the breast, for the images that carry a VOI window or LUT).

    python benchmarks/eval_stage0_phantoms.py --seeds 5 --images 24 --size 320 256
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from breastdensity.data.mammograms import (
    dice,
    preprocess,
    quantise,
    read_mammogram,
    to_output_frame,
)
from breastdensity.data.raw_phantoms import make_raw_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--images", type=int, default=24, help="raw phantoms per seed")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 256), metavar=("H", "W"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="stage0_eval_"))
    rows = []
    for seed in range(args.seeds):
        for index in range(args.images):
            raw = make_raw_phantom(seed, index, tuple(args.size))
            path = folder / f"{raw.name}.dcm"
            raw.dataset.save_as(path, enforce_file_format=True)
            result = preprocess(read_mammogram(path))
            true_breast = to_output_frame(raw.breast_mask, result.geometry).astype(bool)
            true_pectoral = to_output_frame(raw.pectoral_mask, result.geometry).astype(bool)
            output = quantise(result.image, 8)
            reference = raw.reference[np.ix_(raw.reference.any(1), raw.reference.any(0))]
            reference = cv2.resize(reference, output.shape[::-1], interpolation=cv2.INTER_NEAREST)
            inside = (output > 0) & (reference > 0) & ~result.pectoral_mask
            rows.append(
                {
                    "voi": raw.description["voi_mode"],
                    "mlo": raw.projection.startswith("MLO"),
                    "projection_right": result.projection == raw.projection,
                    "breast_dice": dice(result.breast_mask, true_breast),
                    "pectoral_dice": dice(result.pectoral_mask, true_pectoral),
                    "mad": np.abs(output[inside].astype(float) - reference[inside]).mean(),
                }
            )
    table = pd.DataFrame(rows)
    mlo = table[table["mlo"]]
    windowed = table[table["voi"] != "FOR_PROCESSING"]
    print(
        f"{len(table)} raw phantoms ({args.seeds} seeds x {args.images}, {args.size[0]}x{args.size[1]})"
    )
    print(f"laterality + view right: {int(table['projection_right'].sum())}/{len(table)}")
    print(
        f"breast Dice: min {table['breast_dice'].min():.4f}, mean {table['breast_dice'].mean():.4f}"
    )
    print(
        f"pectoral Dice ({len(mlo)} MLO): min {mlo['pectoral_dice'].min():.4f}, mean {mlo['pectoral_dice'].mean():.4f}"
    )
    print(
        f"CC views with a pectoral found: {int((table[~table['mlo']]['pectoral_dice'] < 1).sum())}"
    )
    print(
        f"vs the generator's preprocessed form, |difference| in gray levels ({len(windowed)} with a "
        f"VOI window/LUT): mean {windowed['mad'].mean():.2f}, max {windowed['mad'].max():.2f}"
    )


if __name__ == "__main__":
    main()
