"""How real do the phantoms look? Per-image features of real mammograms vs phantoms.

    python tools/realism.py --real runs/stage0_cbis \\
        --phantoms before=runs/phantoms_before after=runs/phantoms_after \\
        --out runs/realism_report

``NAME=A,B,C`` pools several phantom folders (say, three seeds) into one set,
so that its numbers move less from one seed to the next.

Real images must first go through stage 0 (``Preprocess_Mammograms.py``), so
that real and phantom images are compared in the same preprocessed form: 8-bit,
background 0, reference orientation, pectoral muscle filled with one gray.
Every image is then resized to the network's input (``--size``, aspect not
kept, as training and prediction do) and these features are computed on the
breast (background, the flat pectoral fill and a thin rim under the skin left
out):

* ``mean``, ``spread`` (standard deviation), ``skewness`` of the breast's gray
  levels on the 0-1 scale of the project's normalisation (x / 255);
* ``beta``: slope of the radial power spectrum, P(f) ~ 1/f^beta, in the largest
  square inside the breast (Hann window, fit over 1/16 to 1/4 cycles/pixel);
  published values for mammograms are about 3 (1.5-3.5);
* ``coherence``: mean gradient-orientation coherence of the structure tensor
  ((l1 - l2) / (l1 + l2), 0 = isotropic, 1 = one orientation);
* ``edges``: fraction of breast pixels on a Canny edge (fixed thresholds);
* ``bright``: fraction of breast pixels brighter than 0.75 (191 of 255).

It writes ``features.csv`` (one row per image), ``percentiles.csv`` (each real
image's percentile in each phantom set, per feature), ``summary.csv`` (per
phantom set: real images outside the 5-95 % range, leave-one-out AUC of a
logistic regression telling real from phantom) and three figures: the feature
distributions, real and phantom images side by side, and where the edges are
(``realism_edges.png``). Takes about half a minute for 800 phantoms.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats
from skimage.feature import canny, structure_tensor, structure_tensor_eigenvalues
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ("mean", "spread", "skewness", "beta", "coherence", "edges", "bright")
FEATURE_TITLES = {
    "mean": "breast mean gray (0-1)",
    "spread": "breast gray std (0-1)",
    "skewness": "gray-level skewness",
    "beta": "power-spectrum slope beta",
    "coherence": "orientation coherence",
    "edges": "edge density (Canny)",
    "bright": "fraction of pixels > 0.75",
}
BRIGHT_LEVEL = 0.75
RANGE = (5.0, 95.0)  # the goal: every real image inside this percentile range


def breast_region(image: np.ndarray) -> np.ndarray:
    """Pixels to measure: breast (gray > 0) without the flat pectoral fill and the skin rim.

    Stage 0 and the generator both fill the MLO pectoral muscle with one gray
    level; such a large flat patch would dominate spread, edges and texture.
    """
    breast = image > 0
    values, counts = np.unique(image[breast], return_counts=True)
    if len(values):
        fill = values[np.argmax(counts)]
        flat = (image == fill) & (cv2.blur((image == fill).astype(np.float32), (5, 5)) > 0.99)
        if 0.02 * breast.sum() < flat.sum() < 0.5 * breast.sum():  # a patch, not the breast
            flat = cv2.dilate(flat.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            breast &= ~flat
    rim = max(2, image.shape[1] // 64)
    eroded = cv2.erode(breast.astype(np.uint8), np.ones((2 * rim + 1, 2 * rim + 1), np.uint8))
    return eroded.astype(bool)


def spectral_slope(image: np.ndarray, region: np.ndarray) -> float:
    """beta of P(f) ~ 1/f^beta in the largest square inside ``region`` (NaN if < 32 px)."""
    # Pad: the breast touches the chest-wall edge, and the square must stay inside the image.
    padded = np.pad(region.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    half = int(min(distance[row, col] / np.sqrt(2.0), 64))
    if half < 16:
        return float("nan")
    patch = image[row - half : row + half, col - half : col + half].astype(np.float64)
    patch = patch - patch.mean()
    window = np.outer(np.hanning(2 * half), np.hanning(2 * half))
    power = np.abs(np.fft.fftshift(np.fft.fft2(patch * window))) ** 2
    fy, fx = np.meshgrid(
        np.fft.fftshift(np.fft.fftfreq(2 * half)),
        np.fft.fftshift(np.fft.fftfreq(2 * half)),
        indexing="ij",
    )
    frequency = np.hypot(fx, fy)
    edges = np.geomspace(1 / 16, 1 / 4, 9)
    centres, means = [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        ring = (frequency >= low) & (frequency < high)
        if ring.any():
            centres.append(np.sqrt(low * high))
            means.append(power[ring].mean())
    slope = np.polyfit(np.log(centres), np.log(np.asarray(means) + 1e-12), 1)[0]
    return float(-slope)


def edge_map(gray: np.ndarray) -> np.ndarray:
    """Canny edges of a 0-1 image, fixed thresholds: a faint, low-contrast texture has fewer edges."""
    return canny(gray, sigma=1.5, low_threshold=0.02, high_threshold=0.05)


def image_features(image: np.ndarray) -> dict[str, float]:
    """The features of one uint8 image already at the measuring size."""
    region = breast_region(image)
    if region.sum() < 100:
        raise ValueError("fewer than 100 breast pixels: is the image blank or not stage-0 output?")
    gray = image.astype(np.float64) / 255.0
    values = gray[region]
    tensor = structure_tensor(gray, sigma=2.0, order="rc")
    large, small = structure_tensor_eigenvalues(tensor)
    coherence = (large - small) / (large + small + 1e-9)
    edges = edge_map(gray)
    return {
        "mean": float(values.mean()),
        "spread": float(values.std()),
        "skewness": float(stats.skew(values)),
        "beta": spectral_slope(gray, region),
        "coherence": float(coherence[region].mean()),
        "edges": float(edges[region].mean()),
        "bright": float((values > BRIGHT_LEVEL).mean()),
    }


def image_files(folder: Path) -> list[Path]:
    """PNG images under a stage-0 or phantom folder, without masks."""
    skip = {"Masks", "DenseMasks"}
    files = [
        p for p in sorted(folder.rglob("*.png")) if not skip & set(p.relative_to(folder).parts)
    ]
    if not files:
        raise SystemExit(f"no PNG images under {folder}: give a stage-0 output or phantom folder")
    return files


def projection_of(path: Path) -> str:
    stem = path.stem
    for projection in ("CC_R", "CC_L", "MLO_R", "MLO_L"):
        if stem.endswith(projection):
            return projection
    return "?"


def read_at_size(path: Path, size: int) -> np.ndarray:
    """A stage-0 or phantom PNG at the measuring size, the background kept exactly 0."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    resized[cv2.resize((image > 0).astype(np.uint8), (size, size)) == 0] = 0
    return resized


def measure(folders: list[Path], source: str, size: int, limit: int | None = None) -> pd.DataFrame:
    rows = []
    for folder in folders:
        files = image_files(folder)
        if limit:
            files = files[:limit]
        for path in files:
            rows.append(
                {
                    "source": source,
                    "name": path.name,
                    "file": str(path),
                    "projection": projection_of(path),
                }
                | image_features(read_at_size(path, size))
            )
    return pd.DataFrame(rows)


def leave_one_out_auc(real: pd.DataFrame, phantoms: pd.DataFrame) -> float:
    """ROC AUC of a logistic regression telling real (1) from phantom (0), leave-one-out."""
    data = pd.concat([real, phantoms])
    x = data[list(FEATURES)].fillna(data[list(FEATURES)].median()).to_numpy()
    y = np.r_[np.ones(len(real)), np.zeros(len(phantoms))]
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    )
    scores = cross_val_predict(model, x, y, cv=LeaveOneOut(), method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def percentiles(real: pd.DataFrame, phantoms: pd.DataFrame) -> pd.DataFrame:
    table = real[["name", "projection"]].copy()
    for feature in FEATURES:
        reference = phantoms[feature].dropna().to_numpy()
        table[feature] = [
            stats.percentileofscore(reference, value) if np.isfinite(value) else np.nan
            for value in real[feature]
        ]
    return table


def plot_features(real: pd.DataFrame, sets: dict[str, pd.DataFrame], path: Path) -> None:
    """One panel per feature: each phantom set as a violin with its 5-95 % bar, real images as dots."""
    figure, axes = plt.subplots(1, len(FEATURES), figsize=(2.3 * len(FEATURES), 3.8))
    names = list(sets)
    for axis, feature in zip(axes, FEATURES, strict=True):
        data = [sets[name][feature].dropna().to_numpy() for name in names]
        axis.violinplot(data, positions=range(len(names)), showextrema=False)
        for position, values in enumerate(data):
            low, high = np.percentile(values, RANGE)
            axis.plot([position, position], [low, high], color="black", lw=2)
        jitter = np.linspace(-0.15, 0.15, len(real))
        for position in range(len(names)):
            axis.scatter(
                position + jitter,
                real[feature],
                s=14,
                color="crimson",
                zorder=3,
                label="real (stage 0)" if position == 0 else None,
            )
        # set names may be long (v3_seed8): turned when there are more than two
        turned = len(names) > 2
        axis.set_xticks(
            range(len(names)),
            names,
            fontsize=8,
            rotation=45 if turned else 0,
            ha="right" if turned else "center",
        )
        axis.set_title(FEATURE_TITLES[feature], fontsize=9)
        axis.tick_params(axis="y", labelsize=8)
    axes[0].legend(loc="upper left", fontsize=7)
    figure.suptitle(
        "Real mammograms (red dots) against phantom feature distributions, one violin per "
        "phantom set (black bar: 5-95 % range)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_side_by_side(real: pd.DataFrame, sets: dict[str, pd.DataFrame], size: int, path: Path):
    """Rows: real, then each phantom set; columns: CC and MLO of two breasts, as the network sees them."""
    projections = ("CC_R", "MLO_R", "CC_L", "MLO_L")
    rows = {"real": real, **{f"{name} phantoms": table for name, table in sets.items()}}
    figure, axes = plt.subplots(
        len(rows), len(projections), figsize=(2.4 * len(projections), 2.9 * len(rows))
    )
    axes = np.atleast_2d(axes)
    for i, (name, table) in enumerate(rows.items()):
        for j, projection in enumerate(projections):
            axis = axes[i, j]
            axis.axis("off")
            candidates = table[table["projection"] == projection]
            if candidates.empty:
                continue
            path_j = Path(candidates.iloc[(j // 2) % len(candidates)]["file"])
            image = cv2.resize(cv2.imread(str(path_j), cv2.IMREAD_GRAYSCALE), (size, size))
            axis.imshow(image, cmap="gray", vmin=0, vmax=255)
            axis.set_title(f"{name}: {projection}\n{path_j.stem[:22]}", fontsize=8)
    figure.suptitle(f"Real (after stage 0) vs phantoms, {size} x {size} as the network sees them")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_edge_maps(real: pd.DataFrame, sets: dict[str, pd.DataFrame], size: int, path: Path):
    """Where the edges are: images (top) and their Canny edge maps (bottom), breast region only.

    Columns: the first and the last real image (one of each source when two folders are
    given), then the first CC_R image of each phantom set. The edge-density feature is the
    share of white pixels of the bottom row.
    """
    columns = [("real", real.iloc[0]), ("real", real.iloc[-1])]
    for name, table in sets.items():
        chosen = table[table["projection"] == "CC_R"]
        columns.append((name, (chosen if len(chosen) else table).iloc[0]))
    figure, axes = plt.subplots(2, len(columns), figsize=(2.4 * len(columns), 5.4), squeeze=False)
    for j, (name, row) in enumerate(columns):
        image = read_at_size(Path(row["file"]), size)  # exactly what was measured
        region = breast_region(image)
        edges = edge_map(image / 255.0) & region
        axes[0, j].imshow(image, cmap="gray", vmin=0, vmax=255)
        axes[0, j].set_title(f"{name}: {Path(row['file']).stem[:20]}", fontsize=8)
        axes[1, j].imshow(edges, cmap="gray")
        axes[1, j].set_title(f"edge density {row['edges']:.3f}", fontsize=8)
        for axis in axes[:, j]:
            axis.axis("off")
    figure.suptitle("Where the edges are: Canny edges (bottom) inside the measured breast region")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--real", nargs="+", type=Path, required=True, help="stage-0 output folders of real images"
    )
    parser.add_argument(
        "--phantoms",
        nargs="+",
        required=True,
        metavar="NAME=FOLDER",
        help="phantom folders (Make_Phantoms.py output), each named, e.g. before=runs/old; "
        "NAME=A,B pools several folders into one set",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/realism"), help="output folder")
    parser.add_argument("--size", type=int, default=256, help="measuring size (network input)")
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many phantoms per set (quick look)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    matplotlib.use("Agg")  # files only, no windows
    args.out.mkdir(parents=True, exist_ok=True)
    real = measure(args.real, "real", args.size)
    sets = {}
    for item in args.phantoms:
        name, _, folder = item.partition("=")
        if not folder:
            raise SystemExit(f"--phantoms {item!r}: write NAME=FOLDER, e.g. before=runs/old")
        # several folders (seeds) pooled into one set: less seed noise in its AUC
        sets[name] = measure([Path(f) for f in folder.split(",")], name, args.size, args.limit)
    pd.concat([real, *sets.values()]).to_csv(args.out / "features.csv", index=False)

    summary, tables = [], []
    for name, phantoms in sets.items():
        table = percentiles(real, phantoms)
        table.insert(0, "phantoms", name)
        tables.append(table)
        outside = (table[list(FEATURES)] < RANGE[0]) | (table[list(FEATURES)] > RANGE[1])
        summary.append(
            {
                "phantoms": name,
                "phantom_images": len(phantoms),
                "real_images": len(real),
                "real_outside_5_95": int(outside.any(axis=1).sum()),
                "feature_values_outside": int(outside.to_numpy().sum()),
                **{f"outside_{f}": int(outside[f].sum()) for f in FEATURES},
                "loo_auc_real_vs_phantom": round(leave_one_out_auc(real, phantoms), 3),
            }
        )
    pd.concat(tables).round(1).to_csv(args.out / "percentiles.csv", index=False)
    summary = pd.DataFrame(summary)
    summary.to_csv(args.out / "summary.csv", index=False)
    plot_features(real, sets, args.out / "realism_features.png")
    plot_side_by_side(real, sets, args.size, args.out / "realism_side_by_side.png")
    plot_edge_maps(real, sets, args.size, args.out / "realism_edges.png")

    medians = pd.concat([real, *sets.values()]).groupby("source")[list(FEATURES)].median()
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print("median features:\n", medians.round(3), "\n", sep="")
        print(summary.T.to_string(header=False))
    print(f"written: {args.out}/features.csv, percentiles.csv, summary.csv, *.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
