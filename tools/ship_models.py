"""Copy trained models into myproject/<PROJ>_model/ for shipping: best checkpoint without optimizer state.

    python tools/ship_models.py --from runs/demo

For each projection: the best checkpoint (by validation accuracy in its file
name), or with ``--final`` the weights at the end of the run, re-saved without
the optimizer (smaller, enough for prediction and Grad-CAM); the history files,
history.csv, the curves plot and the training configuration. TensorBoard logs
stay behind.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from breastdensity.conventions import (
    CONFIG_FILE,
    FINAL_WEIGHTS,
    PROJECTIONS,
    best_checkpoint,
    model_dir,
)
from breastdensity.quiet import quiet_tensorflow

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--from", dest="source", type=Path, required=True, help="models root of the training run"
    )
    parser.add_argument(
        "--to", type=Path, default=REPO / "myproject", help="models root to ship into"
    )
    parser.add_argument(
        "--final",
        action="store_true",
        help=f"ship {FINAL_WEIGHTS} (the weights at the end of the run, as cross-validation "
        "scored them) instead of the best checkpoint by validation accuracy",
    )
    args = parser.parse_args()
    quiet_tensorflow()  # after the arguments: --help answers at once
    import keras

    from breastdensity.training import (
        CURVES_FILE,
        HISTORY_CSV,
        HISTORY_FILES,
        plot_curves,
        save_model,
    )

    for projection in PROJECTIONS:
        source, target = model_dir(args.source, projection), model_dir(args.to, projection)
        best = source / FINAL_WEIGHTS if args.final else best_checkpoint(source)
        if best is None or not best.is_file():
            raise SystemExit(f"no {'final weights' if args.final else 'checkpoint'} in {source}")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        save_model(keras.saving.load_model(best), target / best.name, include_optimizer=False)
        for name in [*HISTORY_FILES, HISTORY_CSV, CURVES_FILE, CONFIG_FILE]:
            shutil.copy2(source / name, target / name)
        if args.final:  # the curves mark the shipped epoch, not the best checkpoint left behind
            plot_curves(target, final=True)
        size = (target / best.name).stat().st_size / 2**20
        print(f"{projection}: {best.name} ({size:.1f} MB) -> {target}")


if __name__ == "__main__":
    main()
