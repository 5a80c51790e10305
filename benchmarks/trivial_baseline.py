"""The trivial baseline of the phantoms: logistic regression on breast mean and std.

The CNN must beat it clearly; if it did not, the phantoms' class would be
given away by global brightness rather than by the amount of dense tissue.

    python benchmarks/trivial_baseline.py --train data/phantoms --test data/eval_screening
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from breastdensity.quiet import quiet_tensorflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train", type=Path, required=True, help="generated dataset with a train split"
    )
    parser.add_argument(
        "--test", type=Path, help="generated dataset with a test split (default: --train)"
    )
    args = parser.parse_args()
    quiet_tensorflow()  # after the arguments: --help answers at once
    from breastdensity.baseline import trivial_baseline

    print(json.dumps(trivial_baseline(args.train, args.test), indent=2))


if __name__ == "__main__":
    main()
