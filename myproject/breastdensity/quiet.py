"""Start TensorFlow without its start-up chatter: import this module before anything imports it.

On a machine without a GPU, TensorFlow prints a dozen lines when it loads
(oneDNN notes, "Could not find cuda drivers", "failed call to cuInit: ...
CUDA error"), which read like failures although nothing is wrong. Some are
written before TensorFlow's logging is set up, so no setting silences them;
this module loads TensorFlow with the C-level standard error pointed at
/dev/null for the duration of the import, and sets its C++ log level so that
the later CUDA probing stays quiet too.

Real problems still show: a failed import raises its Python exception after
standard error is restored, and errors while running are Python exceptions.
Set ``TF_CPP_MIN_LOG_LEVEL`` yourself (e.g. to 0) to see everything again.
"""

from __future__ import annotations

import os
import sys

if "tensorflow" not in sys.modules:  # else it is too late to silence anything
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    _saved_stderr = os.dup(2)
    try:
        with open(os.devnull, "w") as _devnull:
            os.dup2(_devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(_saved_stderr, 2)
        os.close(_saved_stderr)
