"""What every notebook runs first: ``setup()``, called by its "Setup environment" cell.

That cell installs the package when it runs in Colab (which starts with nothing
but the notebook); everywhere else ``make`` or ``pip install -e .`` has done it.
Then ``setup()``, the same for the three notebooks:

* moves to ``myproject/`` of the repository, where the stage folders are
  (``TestSet/``, ``<PROJ>_model/``, ``Prediction/``): the notebooks' paths are
  relative to it, whatever folder the notebook was started from;
* loads TensorFlow without its start-up chatter (``quiet_tensorflow``);
* prints the working folder and the versions that matter.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from .quiet import quiet_tensorflow

# a file that only myproject/ has: how a folder is recognised as the project folder
PROJECT_MARKER = "Figure_merit.ipynb"


def project_folder() -> Path:
    """``myproject/`` of the repository this package was installed from.

    Raises:
        FileNotFoundError: if the package was not installed from a copy of the
            repository and the working folder is not ``myproject/`` either.
    """
    # An editable install (make, pip install -e .) imports the package from myproject/ itself.
    source = Path(__file__).resolve().parents[1]
    if (source / PROJECT_MARKER).is_file():
        return source
    # A plain install (Colab's %pip install ./repository) copies the package into
    # site-packages; pip records the folder it came from (direct_url.json, PEP 610).
    try:
        direct_url = metadata.distribution("breastdensity").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        direct_url = None
    if direct_url:
        url = urlparse(json.loads(direct_url)["url"])
        if url.scheme == "file":
            folder = Path(url2pathname(url.path)) / "myproject"
            if (folder / PROJECT_MARKER).is_file():
                return folder
    if (Path.cwd() / PROJECT_MARKER).is_file():
        return Path.cwd()
    raise FileNotFoundError(
        "cannot find myproject/ (the folder with the notebooks and TestSet/): install the "
        "package from a copy of the repository (pip install -e . in its root folder) or "
        "start the notebook in myproject/"
    )


def setup() -> None:
    """Work from ``myproject/``, load TensorFlow without its chatter, print the versions."""
    folder = project_folder()
    os.chdir(folder)
    quiet_tensorflow()
    tensorflow, keras = sys.modules["tensorflow"], sys.modules["keras"]
    print(f"working folder: {folder}")
    print(
        f"Python {platform.python_version()}, TensorFlow {tensorflow.__version__}, "
        f"Keras {keras.__version__}"
    )
