"""TensorFlow without its start-up chatter: ``quiet_tensorflow()``, called before TensorFlow loads.

On a machine without a GPU, TensorFlow prints a dozen lines when it loads
(oneDNN notes, "Could not find cuda drivers", "failed call to cuInit: ...
CUDA error"), which read like failures although nothing is wrong. Some are
written before TensorFlow's logging is set up, so no setting silences them:
``quiet_tensorflow`` loads TensorFlow with the C-level standard error pointed at
/dev/null for the duration of the import, and sets its C++ log level so that
the later CUDA probing stays quiet too.

Real problems still show: a failed import raises its Python exception after
standard error is restored, and errors while running are Python exceptions.
Set ``TF_CPP_MIN_LOG_LEVEL`` yourself (e.g. to 0) to see everything again.
"""

from __future__ import annotations

import importlib
import os
import sys


def quiet_tensorflow() -> None:
    """Load TensorFlow (and Keras) now, without the lines it prints while loading.

    Call it before anything imports TensorFlow; afterwards it is too late to
    silence anything, and the call does nothing.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            importlib.import_module("tensorflow")
            importlib.import_module("keras")
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
