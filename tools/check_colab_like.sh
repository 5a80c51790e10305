#!/usr/bin/env bash
# Runs the three notebooks as a Colab user does, on Colab's own stack, before a release:
#
#   bash tools/check_colab_like.sh [VENV]      # default VENV: /tmp/colab-like-venv
#
# Not part of the test suite: the first run downloads about 1 GB; then about 10 minutes
# on a 2-core CPU (each notebook 1.5-3.5 minutes, mostly its setup cell's install).
#
# * The environment is Colab's, not ours: Python 3.12 with the versions Colab ships
#   (TensorFlow 2.19, Keras 3.10, pandas 2.2, matplotlib 3.10, the plain opencv-python
#   wheel), no breastdensity, tf-keras-vis or pydicom. It is reset to that before each
#   notebook, so every notebook's setup cell installs the package itself.
# * Each notebook starts in an empty folder, as in Colab, and its setup cell runs its
#   Colab branch: a stand-in google.colab module is imported when the kernel starts
#   (as Colab does), and git fetches "https://github.com/<REPOSITORY>" from a snapshot
#   of this working tree (uncommitted changes included) instead of GitHub.
# * The cell runs as written; only its REPOSITORY form field is filled in, as a user
#   fills it in Colab. The other settings are the notebooks' papermill parameters,
#   turned down so that the run takes minutes.
# * Finally the setup cell runs twice in one kernel: the second run must not clone again.
#
# It exits non-zero at the first failure; executed notebooks and logs stay in the work
# folder it prints.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-/tmp/colab-like-venv}

# Colab's stack (its Python, and the versions of the libraries it preinstalls)
COLAB_STACK=("tensorflow==2.19.*" "keras==3.10.*" "numpy==2.0.*" "pandas==2.2.*"
    "matplotlib==3.10.*" "opencv-python==4.12.*" "scikit-learn==1.6.*" "scikit-image==0.25.*"
    scipy tqdm jinja2 ipywidgets ipykernel)
# what the setup cell installs on top of it: removed again before each notebook
PACKAGE_ADDS=(breastdensity tf-keras-vis pydicom)

find_python312() {
    for candidate in "${PYTHON:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        if [ -n "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
    echo "no Python 3.12 found: install it or set PYTHON=/path/to/python3.12" >&2
    exit 2
}

started=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
    "$(find_python312)" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
fi
# papermill runs the notebooks from outside; Colab has no need of it (seconds when present)
"$VENV/bin/pip" install --quiet "${COLAB_STACK[@]}" papermill
echo "Colab-like environment ready in $((SECONDS - started)) s"
# the notebooks' kernel: this environment's Python, whatever kernels the machine has
"$VENV/bin/python" -m ipykernel install --prefix "$VENV" --name colab-like >/dev/null

WORK=$(mktemp -d /tmp/colab-like-check.XXXXXX)
echo "work folder: $WORK"
NAME=colab-check/breast-density # what the user types into the REPOSITORY form field

# A snapshot of the working tree as a git repository: what Colab would clone.
mkdir "$WORK/snapshot"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do
        if [ -e "$file" ]; then printf '%s\0' "$file"; fi # not the files deleted since
    done | tar --null -T - -cf -) | tar -C "$WORK/snapshot" -xf -
git -C "$WORK/snapshot" init --quiet
git -C "$WORK/snapshot" add -A
git -C "$WORK/snapshot" -c user.name=check -c user.email=check@localhost commit --quiet -m snapshot

# A home of its own: git's address redirection, and the kernel's start-up file.
export HOME="$WORK/home"
mkdir -p "$HOME/.ipython/profile_default/startup" "$WORK/stub/google/colab"
git config --global url."file://$WORK/snapshot".insteadOf "https://github.com/$NAME"
# a namespace package (no google/__init__.py), so google.protobuf still imports
echo '"""Stand-in for Colab'"'"'s module: only its presence matters."""' \
    >"$WORK/stub/google/colab/__init__.py"
echo "import google.colab  # as Colab's kernel does at start" \
    >"$HOME/.ipython/profile_default/startup/00-colab.py"
export PYTHONPATH="$WORK/stub"

colab_state() {
    "$VENV/bin/pip" uninstall --quiet --yes "${PACKAGE_ADDS[@]}" 2>/dev/null || true
    "$VENV/bin/pip" install --quiet "keras==3.10.*"
}

fill_form() { # notebook -> a copy with the REPOSITORY form field filled in
    "$VENV/bin/python" - "$1" "$2" "$NAME" <<'EOF'
import sys, nbformat
source, target, name = sys.argv[1:]
notebook = nbformat.read(source, as_version=4)
setup_cell = next(cell for cell in notebook.cells if cell.cell_type == "code")
shipped = 'REPOSITORY = "OWNER/REPO"  # @param'
assert setup_cell.source.count(shipped) == 1, "the setup cell has no REPOSITORY form field"
setup_cell.source = setup_cell.source.replace(shipped, f'REPOSITORY = "{name}"  # @param')
nbformat.write(notebook, target)
EOF
}

run_notebook() { # name, then papermill parameters
    local name=$1 folder="$WORK/${1%.ipynb}"
    shift
    echo "--- $name"
    colab_state
    mkdir "$folder" "$folder/empty"
    fill_form "$WORK/snapshot/myproject/$name" "$folder/$name"
    local clock=$SECONDS
    "$VENV/bin/papermill" "$folder/$name" "$folder/executed.ipynb" --cwd "$folder/empty" \
        -k colab-like --log-level WARNING "$@"
    if [ ! -f "$folder/empty/repository/myproject/$name" ]; then
        echo "FAILED: $name did not run from the clone in its empty folder" >&2
        exit 1
    fi
    echo "$name: $((SECONDS - clock)) s (clone, install, run)"
}

colab_state
"$VENV/bin/python" -c "import sys, tensorflow as tf, keras, cv2, pandas, matplotlib
print('Colab-like:', 'Python', sys.version.split()[0], 'TensorFlow', tf.__version__, 'Keras',
      keras.__version__, 'OpenCV', cv2.__version__, 'pandas', pandas.__version__,
      'matplotlib', matplotlib.__version__)" 2>/dev/null

run_notebook Figure_merit.ipynb -p n_bootstrap 50
run_notebook ClassActivationMaps.ipynb -y "
projections: [CC_R]
compare_max_images: 1
smooth_samples: 2
score_cam_max_channels: 2"
run_notebook Explainability_evaluation.ipynb -y "
projections: [CC_R]
max_per_class: 1
slow_max_per_class: 1
fidelity_steps: 4
robustness_methods: [gradcam, random]
robustness_max_per_class: 1
sanity_images: 2
score_cam_max_channels: 2
smooth_samples: 2
ig_steps: 4
attribution_methods: [expected_gradients, deconvolution]
attribution_ig_steps: 2
attribution_eg_samples: 2
attribution_smooth_samples: 2
eg_baselines: 2"

echo "--- the setup cell run twice in one kernel"
colab_state
mkdir -p "$WORK/twice/empty"
fill_form "$WORK/snapshot/myproject/Figure_merit.ipynb" "$WORK/twice/filled.ipynb"
"$VENV/bin/python" - "$WORK/twice/filled.ipynb" "$WORK/twice/twice.ipynb" <<'EOF'
import sys, nbformat
notebook = nbformat.read(sys.argv[1], as_version=4)
setup_cell = next(cell for cell in notebook.cells if cell.cell_type == "code")
notebook.cells = [setup_cell, nbformat.v4.new_code_cell(setup_cell.source)]
nbformat.write(notebook, sys.argv[2])
EOF
"$VENV/bin/papermill" "$WORK/twice/twice.ipynb" "$WORK/twice/executed.ipynb" \
    --cwd "$WORK/twice/empty" -k colab-like --log-level WARNING
clones=$(find "$WORK/twice/empty" -name myproject -type d | wc -l)
if [ "$clones" -ne 1 ]; then
    echo "FAILED: running the setup cell twice left $clones copies of myproject/" >&2
    exit 1
fi
echo "PASSED: all three notebooks in $((SECONDS - started)) s; outputs in $WORK"
