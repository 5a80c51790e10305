#!/usr/bin/env bash
# Runs the main job (stages 2-4, the notebooks through papermill) in an environment like
# Colab's: Python 3.12, TensorFlow 2.19, OpenCV 4.x headless, plus exactly what the notebooks'
# setup (myproject/notebook_setup.py) installs in Colab: keras and tf-keras-vis at our pins.
# Not part of the test suite (it downloads about 1 GB the first time); run it before a release:
#
#   bash tools/check_colab_like.sh [/path/to/venv]      # default venv: /tmp/colab-like-venv
#
# It exits non-zero if any stage fails, and leaves its outputs in /tmp/colab-like-run/.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/colab-like-venv}
PYTHON=${PYTHON:-python3.12}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "tensorflow==2.19.*" "opencv-python-headless==4.12.*" \
        pandas scikit-learn scikit-image scipy matplotlib tqdm jinja2 papermill ipykernel nbclient
fi
# What the notebooks' setup cell installs in Colab (one list, read from notebook_setup.py).
mapfile -t packages < <("$VENV/bin/python" -c "
import ast, pathlib
text = pathlib.Path('myproject/notebook_setup.py').read_text()
print('\n'.join(ast.literal_eval(text.split('COLAB_PACKAGES = ', 1)[1].split('\n', 1)[0])))")
"$VENV/bin/pip" install --quiet "${packages[@]}" pydicom==3.0.2
"$VENV/bin/python" -c "import sys, tensorflow as tf, keras, cv2; print(sys.version.split()[0], 'TF', tf.__version__, 'Keras', keras.__version__, 'OpenCV', cv2.__version__)"
OUT=/tmp/colab-like-run
rm -rf "$OUT"
cd myproject
"$VENV/bin/python" Run_Example.py --predictions-dir "$OUT/Prediction" --maps-dir "$OUT/MAPS" \
    --executed-dir "$OUT/executed" --n-bootstrap 200 --compare-max-images 1
