"""Stages 2, 3 and 4 and the evaluation notebook with the other backbones (EfficientNet, ViT).

Each stage reads what it needs (input size, the layer to explain) from the model file, so a
model set of untrained, tiny EfficientNets and ViTs must go through them like the ResNet's.
"""

import json
import shutil
import subprocess
import sys

import cv2
import keras
import nbformat
import numpy as np
import pandas as pd
import Prediction_ResNet
import pytest
from conftest import MYPROJECT, execute_notebook

from breastdensity.backbones import EXPLAIN_LAYER, build_backbone
from breastdensity.conventions import CONFIG_FILE, FINAL_WEIGHTS, PROJECTIONS
from breastdensity.data.phantoms import generate_dataset
from breastdensity.explain.methods import Explainer
from breastdensity.inference import load_model
from breastdensity.preprocessing import model_image_size

# Tiny inputs: a 2 x 2 grid of EfficientNet feature maps, a 4 x 4 grid of ViT patches.
SIZES = {"efficientnet": 64, "vit-tiny": 64}
# A model set of both backbones, one per side: every stage must read each model's needs
# from its own file (and running each stage once keeps this file's CPU time small).
BACKBONE_OF = {
    "CC_R": "efficientnet",
    "MLO_R": "efficientnet",
    "CC_L": "vit-tiny",
    "MLO_L": "vit-tiny",
}
# The methods that need nothing but the input and the scores (or the layer the model names).
MODEL_AGNOSTIC = ("gradcam", "saliency", "smoothgrad", "integrated_gradients", "occlusion")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """backbone -> a seeded, untrained model of it saved as .keras, and its predictions of
    ``probe`` images (to compare with what a loaded copy predicts)."""
    root = tmp_path_factory.mktemp("backbones")
    files = {}
    for name, size in SIZES.items():
        keras.utils.set_random_seed(0)
        model = build_backbone(name, size)
        path = root / f"{name}.keras"
        model.save(path)
        files[name] = (path, model.predict(probe(size), verbose=0))
    return files


def probe(size: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, (2, size, size, 3)).astype("float32")


def model_set(root, model_files):
    """``root/<PROJ>_model/``: each projection's model file, and a training_config.json naming
    its projection and backbone as Train_ResNet.py writes it."""
    for projection, model_file in model_files.items():
        folder = root / f"{projection}_model"
        folder.mkdir(parents=True)
        shutil.copyfile(model_file, folder / FINAL_WEIGHTS)
        backbone = BACKBONE_OF[projection]
        size = SIZES[backbone]
        config = {"projection": projection, "backbone": backbone, "image_size": [size, size]}
        (folder / CONFIG_FILE).write_text(json.dumps(config))
    return root


def test_saved_models_load_in_a_fresh_process(saved):
    # A fresh interpreter has imported nothing: loading a ViT must not depend on the test
    # having imported breastdensity.backbones (its custom layer is registered by that import).
    script = (
        "import sys, numpy as np\n"
        "from breastdensity.inference import load_model\n"
        "from breastdensity.backbones import explain_layer_name\n"
        "for path in sys.argv[1:]:\n"
        "    model = load_model(path)\n"
        "    size = model.input_shape[1]\n"
        "    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, size, size, 3)).astype('float32')\n"
        "    np.save(path + '.npy', model.predict(x, verbose=0))\n"
        "    print(path, model.input_shape, explain_layer_name(model))\n"
    )
    paths = [str(path) for path, _ in saved.values()]
    done = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for name, (path, expected) in saved.items():
        size = SIZES[name]
        assert f"{path} (None, {size}, {size}, 3) {EXPLAIN_LAYER}" in done.stdout
        np.testing.assert_allclose(np.load(f"{path}.npy"), expected, atol=1e-6)


@pytest.mark.parametrize(
    "backbone", [pytest.param("efficientnet", marks=pytest.mark.slow), "vit-tiny"]
)
def test_model_agnostic_methods_give_finite_maps_on_every_backbone(saved, backbone):
    model = load_model(saved[backbone][0])
    explainer = Explainer(
        model, smooth_samples=2, ig_steps=4, occlusion_patch=0.25, occlusion_stride=0.25
    )
    assert explainer.layer_name == EXPLAIN_LAYER  # read from the model
    images = probe(SIZES[backbone])
    methods = [*MODEL_AGNOSTIC, "density_gradcam"]  # the density map falls back to EXPLAIN_LAYER
    if backbone == "vit-tiny":
        methods += ["rollout", "chefer"]
    else:
        assert not explainer.supports("rollout")
        with pytest.raises(ValueError, match="no MultiHeadAttention layer"):
            explainer.explain("chefer", images)
    for method in methods:
        maps = explainer.explain(method, images)
        assert maps.shape == (2, *model_image_size(model)), method
        assert np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1 + 1e-6, method


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """4 test subjects (one per class) at 64 px, with their dense-tissue masks."""
    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(root, (0, 0, 4), (64, 64), seed=5)
    return root


@pytest.mark.slow
def test_every_stage_runs_on_a_model_set_of_both_backbones(saved, phantoms, tmp_path):
    models = model_set(tmp_path / "models", {p: saved[b][0] for p, b in BACKBONE_OF.items()})
    test_root = phantoms / "TestSet"

    # stage 2: the four projections' probabilities
    predictions = tmp_path / "Prediction"
    arguments = ["--projection", "all", "--models-root", str(models), "--test-root", str(test_root)]
    assert Prediction_ResNet.main([*arguments, "--output-dir", str(predictions)]) == 0
    assert len(list(predictions.glob("*.txt"))) == len(PROJECTIONS)
    for txt in predictions.glob("*.txt"):
        matrix = np.loadtxt(txt)
        assert matrix.shape == (4, 4) and np.isfinite(matrix).all(), txt.name
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)

    # stage 3: the figures of merit from those files
    execute_notebook(
        "Figure_merit.ipynb",
        tmp_path / "merit.ipynb",
        predictions_dir=str(predictions),
        output_dir=str(tmp_path / "merit"),
        n_bootstrap=20,
    )
    metrics = pd.read_csv(tmp_path / "merit" / "metrics.csv", index_col=0)
    assert metrics.loc["total", "n"] == 4 and np.isfinite(metrics.loc["total", "accuracy"])

    # stage 4: Grad-CAM on the layer each model names, and the method grids
    shown = ["CC_R", "CC_L"]  # an EfficientNet, a ViT
    execute_notebook(
        "ClassActivationMaps.ipynb",
        tmp_path / "maps.ipynb",
        models_root=str(models),
        test_root=str(test_root),
        projections=shown,
        output_dir=str(tmp_path / "MAPS"),
        compare_max_images=1,
        smooth_samples=2,
        score_cam_max_channels=2,
    )
    text = json.dumps(nbformat.read(tmp_path / "maps.ipynb", as_version=4).cells)
    assert f"Grad-CAM target {EXPLAIN_LAYER}" in text
    for projection in shown:
        size = SIZES[BACKBONE_OF[projection]]
        summary = pd.read_csv(tmp_path / "MAPS" / projection / "cam_summary.csv")
        assert len(summary) == 4 and np.isfinite(summary.probability).all()
        written = summary[summary.status == "written"]
        assert len(written) >= 1, projection  # untrained, yet some image has a map
        for row in written.itertuples():
            stem = row.file.removesuffix(".png")
            folder = tmp_path / "MAPS" / projection / row.true_label
            seen = cv2.imread(str(folder / f"{row.predicted_label}_{stem}_{size}.png"), 0)
            assert seen.shape == (size, size)
            for kind in ("map", "overlay", "contours"):
                assert (folder / f"{row.predicted_label}_{stem}_{kind}.png").is_file()
        assert len(list((tmp_path / "MAPS" / projection).rglob("*_methods.png"))) == 1

    # the evaluation notebook: generic methods (every one is run on each backbone above, in
    # test_model_agnostic_methods_...), and a ViT's own where the model is one
    transformer = ["rollout", "chefer"]
    generic = ["gradcam", "saliency", "random"]
    execute_notebook(
        "Explainability_evaluation.ipynb",
        tmp_path / "evaluation.ipynb",
        models_root=str(models),
        test_root=str(test_root),
        masks_root=str(phantoms / "DenseMasks" / "TestSet"),
        output_dir=str(tmp_path / "out"),
        projections=shown,
        methods=generic + transformer,
        max_per_class=1,
        slow_max_per_class=1,
        fidelity_steps=4,
        robustness_methods=["gradcam", "random"],
        robustness_max_per_class=1,
        sanity_images=1,
        attribution_methods=["backprop"],
        attribution_max_per_class=1,
        attribution_ig_steps=2,
        attribution_eg_samples=2,
        attribution_smooth_samples=2,
        eg_baselines=2,
    )
    expected = {"CC_R": set(generic), "CC_L": set(generic + transformer)}
    scores = pd.read_csv(tmp_path / "out" / "explanation_scores.csv")
    sanity = pd.read_csv(tmp_path / "out" / "sanity_check.csv")
    for projection, methods in expected.items():
        mine = scores[scores.projection == projection]
        assert set(mine.method) == methods and len(mine) == 4 * len(methods)  # 1 image per class
        assert set(sanity[sanity.projection == projection].method) == methods
    assert np.isfinite(scores.deletion_auc).all() and np.isfinite(scores.insertion_auc).all()
    text = json.dumps(nbformat.read(tmp_path / "evaluation.ipynb", as_version=4).cells)
    assert "CC_R: rollout, chefer skipped (they need a Vision Transformer)" in text
    comparison = pd.read_csv(tmp_path / "out" / "attribution_comparison.csv")
    assert set(comparison.projection) == set(shown) and comparison.deletion_auc.notna().all()


def test_shipped_notebooks_name_no_resnet_layer():
    # the layer to explain comes from the model (explain_layer_name), not from the ResNet
    for name in ("ClassActivationMaps.ipynb", "Explainability_evaluation.ipynb"):
        code = "\n".join(
            cell.source
            for cell in nbformat.read(MYPROJECT / name, as_version=4).cells
            if cell.cell_type == "code"
        )
        for resnet_only in ("LAST_RESIDUAL_LAYER", "DENSITY_MAP_LAYER", "build_resnet"):
            assert resnet_only not in code, (name, resnet_only)
