"""Shared core of the breast-density tutorial: conventions, preprocessing, network, I/O.

Scripts (``Train_ResNet.py``, ``Prediction_ResNet.py``, ``Make_Phantoms.py``)
and notebooks import from here; none re-implements any of it.
"""

from .conventions import (
    CLASSES,
    NUM_CLASSES,
    PROJECTIONS,
    SHORT_NAMES,
    DatasetError,
    DataWarning,
)

__version__ = "0.1.0"
__all__ = [
    "CLASSES",
    "NUM_CLASSES",
    "PROJECTIONS",
    "SHORT_NAMES",
    "DatasetError",
    "DataWarning",
    "__version__",
]
