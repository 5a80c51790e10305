"""What every notebook runs first: its "Setup environment" cell imports this module.

That cell only fetches the repository when it runs in Colab and puts the
places this file may be on ``sys.path``; everything else a notebook needs
before its imports is here, written once for the three notebooks:

* Work from ``myproject/`` (this file's folder), wherever the notebook was
  started: the stage folders and the ``breastdensity`` package are there.

* In Colab, install what Colab lacks: Keras at the version the shipped
  ``.keras`` models were saved with (older Keras 3 releases cannot read them)
  and tf-keras-vis. Colab's own TensorFlow stays.
* Everywhere, keep TensorFlow's start-up messages (CUDA probing on a machine
  without a GPU, oneDNN notes) out of the notebook (``breastdensity.quiet``);
  real errors still show.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

COLAB_PACKAGES = ("keras==3.15.1", "tf-keras-vis==0.8.7")

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *COLAB_PACKAGES], check=True)
HERE = Path(__file__).resolve().parent
os.chdir(HERE)
# the setup cell's relative guesses would go stale after chdir: keep only this folder
sys.path[:] = [
    str(HERE),
    *(p for p in sys.path if p not in ("repository/myproject", "myproject", ".")),
]
import breastdensity.quiet  # noqa: E402, F401  TensorFlow without its start-up chatter

print("working directory:", HERE)
