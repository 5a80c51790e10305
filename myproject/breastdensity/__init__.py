"""Shared core of the breast-density tutorial: conventions, preprocessing, network, I/O.

Scripts (``Train_ResNet.py``, ``Prediction_ResNet.py``, ``Make_Phantoms.py``)
and notebooks import its modules (``from breastdensity.conventions import
CLASSES``); none re-implements any of it.
"""

__version__ = "0.2.0"
