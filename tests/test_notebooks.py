"""Notebooks: committed clean, and executed headless on tiny inputs (as papermill users run them)."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import keras
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from conftest import MYPROJECT, REPO, execute_notebook, known_head_network
from IPython.core.inputtransformer2 import TransformerManager

import breastdensity.notebook
from breastdensity.conventions import PROJECTIONS, list_class_images, projection_test_folder
from breastdensity.data.phantoms import generate_dataset
from breastdensity.explain.scoring import SCORE_COLUMNS
from breastdensity.network import build_resnet
from breastdensity.predictions import predictions_table, write_predictions

NOTEBOOKS = sorted(MYPROJECT.glob("*.ipynb"))
SETUP_CELL = next(
    cell.source
    for cell in nbformat.read(MYPROJECT / "Figure_merit.ipynb", as_version=4).cells
    if cell.cell_type == "code"
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_with_one_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "strip outputs"
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    # the same short setup cell everywhere; the work is in breastdensity.notebook.setup
    assert code[0].source == SETUP_CELL
    assert code[0].source.endswith("from breastdensity.notebook import setup\n\nsetup()")
    assert set(notebook.metadata) <= {"kernelspec", "language_info"}  # no personal metadata


class FakeShell:
    """Records what the setup cell asks IPython to run (``!git ...``, ``%pip ...``)."""

    def __init__(self):
        self.commands = []

    def system(self, command):
        self.commands.append(command)

    def run_line_magic(self, name, line):
        self.commands.append(f"%{name} {line}")


def run_setup_cell(source, monkeypatch):
    """The setup cell as Colab runs it at first: google.colab loaded, the package not installed."""
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    installed = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "breastdensity" else installed(name, *args),
    )
    shell = FakeShell()
    python = TransformerManager().transform_cell(source)  # the magics as IPython runs them
    exec(compile(python, "setup cell", "exec"), {"get_ipython": lambda: shell})
    return shell.commands


def test_colab_setup_cell_stops_on_the_placeholder(tmp_path, monkeypatch):
    # In Colab, cloning github.com/OWNER/REPO would fail with a login prompt;
    # the setup cell says what to do instead (before any clone).
    monkeypatch.chdir(tmp_path)
    assert 'REPOSITORY = "OWNER/REPO"  # @param {type:"string"}' in SETUP_CELL  # as shipped
    with pytest.raises(SystemExit, match="Set REPOSITORY"):
        run_setup_cell(SETUP_CELL, monkeypatch)


def test_colab_setup_cell_clones_installs_and_moves_into_myproject(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    filled = SETUP_CELL.replace('"OWNER/REPO"  # @param', '"someone/their-fork"  # @param')
    commands = run_setup_cell(filled, monkeypatch)
    # one clone of the address in the form field, one non-editable install of it
    assert commands == [
        "git clone --quiet --depth=1 https://github.com/{REPOSITORY} repository",
        "%pip install --quiet ./repository",
    ]
    assert "someone/their-fork" in filled
    assert Path.cwd() == MYPROJECT  # this test's package is the repository's, editable
    assert "working folder" in capsys.readouterr().out


def test_setup_cell_outside_colab_only_calls_setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    shell = FakeShell()
    exec(
        compile(TransformerManager().transform_cell(SETUP_CELL), "setup cell", "exec"),
        {"get_ipython": lambda: shell},
    )
    assert shell.commands == [] and Path.cwd() == MYPROJECT


def test_setup_finds_myproject_from_a_plain_install(tmp_path, monkeypatch):
    # Installed without -e (Colab), the package lives in site-packages; pip recorded
    # the folder it was installed from.
    class Installed:
        def read_text(self, name):
            assert name == "direct_url.json"
            return json.dumps({"url": REPO.as_uri(), "dir_info": {}})

    site_packages = tmp_path / "site-packages" / "breastdensity" / "notebook.py"
    monkeypatch.setattr(breastdensity.notebook, "__file__", str(site_packages))
    monkeypatch.setattr(breastdensity.notebook.metadata, "distribution", lambda name: Installed())
    monkeypatch.chdir(tmp_path)
    assert breastdensity.notebook.project_folder() == MYPROJECT


@pytest.fixture(scope="module")
def phantom_test_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    generate_dataset(root, (0, 0, 8), (96, 80), seed=21)
    return root / "TestSet"


@pytest.fixture(scope="module")
def predictions(phantom_test_set, tmp_path_factory):
    """Prediction files as stage 2 writes them, with probabilities that favour the truth."""
    rng = np.random.default_rng(0)
    tables = {}
    for projection in PROJECTIONS:
        records = list_class_images(projection_test_folder(phantom_test_set, projection))
        logits = (
            rng.normal(size=(len(records), 4)) + 2.5 * np.eye(4)[[r.label_index for r in records]]
        )
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        tables[projection] = predictions_table(records, projection, probabilities)
    folder = tmp_path_factory.mktemp("Prediction")
    write_predictions(folder, tables)
    return folder


@pytest.mark.slow
def test_figure_merit_notebook_runs(predictions, tmp_path):
    execute_notebook(
        "Figure_merit.ipynb",
        tmp_path / "executed.ipynb",
        predictions_dir=str(predictions),
        output_dir=str(tmp_path / "out"),
        n_bootstrap=100,
    )
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv", index_col=0)
    assert metrics.index.tolist() == ["CC_R", "MLO_R", "right", "CC_L", "MLO_L", "left", "total"]
    assert metrics["n"].tolist() == [8] * 7
    # the subject-level accuracy, recomputed here from the prediction files
    stacked = pd.concat(pd.read_csv(p) for p in predictions.glob("*.csv"))
    fused = stacked.groupby("subject").agg(
        true_label=("true_label", "first"), **{c: (c, "mean") for c in "ABCD"}
    )
    expected = (fused[list("ABCD")].idxmax(axis=1) == fused["true_label"]).mean()
    assert metrics.loc["total", "accuracy"] == pytest.approx(expected)
    figures = sorted(p.name for p in (tmp_path / "out" / "CONFUSION_MATRICES").iterdir())
    assert figures == sorted(
        f"confusionmatrix_{s}.png" for s in ("CCR", "MLOR", "CCL", "MLOL", "right", "left", "total")
    )
    # the label-free check: each side's class, recomputed from the prediction files
    views = pd.read_csv(tmp_path / "out" / "view_consistency.csv", index_col="subject")
    assert len(views) == 8
    right = stacked[stacked["projection"].isin(["CC_R", "MLO_R"])].groupby("subject")
    assert (views["class_right"] == right[list("ABCD")].mean().idxmax(axis=1)).all()


@pytest.mark.slow
def test_figure_merit_without_labels_still_checks_view_agreement(predictions, tmp_path):
    # as after Prediction_ResNet.py --images: no true label, so no figure of merit
    for csv in predictions.glob("*.csv"):
        pd.read_csv(csv).assign(true_label="").to_csv(tmp_path / csv.name, index=False)
        (tmp_path / csv.with_suffix(".txt").name).write_bytes(csv.with_suffix(".txt").read_bytes())
    execute_notebook(
        "Figure_merit.ipynb",
        tmp_path / "executed.ipynb",
        predictions_dir=str(tmp_path),
        output_dir=str(tmp_path / "out"),
        n_bootstrap=20,
    )
    assert pd.read_csv(tmp_path / "out" / "metrics.csv", index_col=0)["accuracy"].isna().all()
    views = pd.read_csv(tmp_path / "out" / "view_consistency.csv")
    assert len(views) == 8 and views["sides_agree"].notna().all()


@pytest.mark.slow
def test_figure_merit_with_txt_files_only_matches_by_position(
    predictions, phantom_test_set, tmp_path
):
    for txt in predictions.glob("*.txt"):
        (tmp_path / txt.name).write_bytes(txt.read_bytes())
    execute_notebook(
        "Figure_merit.ipynb",
        tmp_path / "executed.ipynb",
        predictions_dir=str(tmp_path),
        output_dir=str(tmp_path),
        test_root=str(phantom_test_set),
        n_bootstrap=50,
    )
    text = json.dumps(nbformat.read(tmp_path / "executed.ipynb", as_version=4).cells)
    assert "matched BY POSITION" in text
    with_csv = pd.read_csv(tmp_path / "metrics.csv", index_col=0)
    assert with_csv.loc["total", "n"] == 8


@pytest.mark.slow
def test_figure_merit_stops_on_missing_subjects_unless_told(predictions, tmp_path):
    for path in predictions.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    csv = tmp_path / "predictions_mlol.csv"
    table = pd.read_csv(csv).iloc[1:]  # one subject lacks MLO_L
    table.to_csv(csv, index=False)
    np.savetxt(tmp_path / "predictions_mlol.txt", table[["A", "B", "C", "D"]].to_numpy())
    parameters = {"predictions_dir": str(tmp_path), "output_dir": str(tmp_path), "n_bootstrap": 20}
    with pytest.raises(papermill.PapermillExecutionError, match="lacks MLO_L"):
        execute_notebook("Figure_merit.ipynb", tmp_path / "failed.ipynb", **parameters)
    execute_notebook(
        "Figure_merit.ipynb", tmp_path / "executed.ipynb", **parameters, drop_incomplete=True
    )
    metrics = pd.read_csv(tmp_path / "metrics.csv", index_col=0)
    assert metrics.loc["total", "n"] == 7 and metrics.loc["right", "n"] == 8


@pytest.mark.slow
def test_class_activation_maps_notebook_runs(phantom_test_set, tmp_path):
    for projection in ("CC_L", "MLO_R"):  # CC_R has no model: skipped with a note
        (tmp_path / "models" / f"{projection}_model").mkdir(parents=True)
        # predicts A, with a non-empty Grad-CAM
        known_head_network(64).save(
            tmp_path / "models" / f"{projection}_model" / "final_weights.keras"
        )
    execute_notebook(
        "ClassActivationMaps.ipynb",
        tmp_path / "executed.ipynb",
        models_root=str(tmp_path / "models"),
        test_root=str(phantom_test_set),
        projections=["CC_L", "MLO_R", "CC_R"],
        output_dir=str(tmp_path / "MAPS"),
        compare_max_images=1,
        smooth_samples=2,
        score_cam_max_channels=2,
    )
    assert sorted(p.name for p in (tmp_path / "MAPS").iterdir()) == ["CC_L", "MLO_R"]
    for projection in ("CC_L", "MLO_R"):
        summary = pd.read_csv(tmp_path / "MAPS" / projection / "cam_summary.csv")
        assert len(summary) == 8
        assert (summary.status == "written").all() and (summary.predicted_label == "A").all()
        assert summary["max_inside_breast"].isin([True, False]).all()  # every map is checked
        for row in summary.itertuples():
            folder = tmp_path / "MAPS" / projection / row.true_label
            stem = row.file.removesuffix(".png")
            for kind in ("64", "map", "overlay", "contours"):
                assert (folder / f"A_{stem}_{kind}.png").is_file(), (row.file, kind)
    assert len(list((tmp_path / "MAPS").rglob("*_methods.png"))) == 2  # one per projection


@pytest.mark.slow
def test_explainability_evaluation_notebook_runs(phantom_test_set, tmp_path):
    keras.utils.set_random_seed(1)
    (tmp_path / "models" / "CC_R_model").mkdir(parents=True)
    build_resnet(64).save(tmp_path / "models" / "CC_R_model" / "final_weights.keras")
    masks = phantom_test_set.parent / "DenseMasks" / "TestSet"
    execute_notebook(
        "Explainability_evaluation.ipynb",
        tmp_path / "executed.ipynb",
        models_root=str(tmp_path / "models"),
        test_root=str(phantom_test_set),
        masks_root=str(masks),
        output_dir=str(tmp_path / "out"),
        projections=["CC_R", "MLO_L"],
        max_per_class=1,
        slow_max_per_class=1,
        fidelity_steps=4,
        robustness_methods=["gradcam", "random"],
        robustness_max_per_class=1,
        sanity_images=2,
        score_cam_max_channels=2,
        smooth_samples=2,
        ig_steps=4,
        attribution_methods=["expected_gradients", "deconvolution"],
        attribution_ig_steps=2,
        attribution_eg_samples=2,
        attribution_smooth_samples=2,
        eg_baselines=2,
    )
    scores = pd.read_csv(tmp_path / "out" / "explanation_scores.csv")
    assert list(scores.columns) == SCORE_COLUMNS
    assert set(scores.projection) == {"CC_R"}  # MLO_L has no model: skipped with a note
    assert len(scores) == 4 * 9  # one image per class, every method (slow ones on the same cap)
    assert set(scores.mask_source) == {"reference"}
    robustness = pd.read_csv(tmp_path / "out" / "robustness.csv")
    assert list(robustness.columns[:5]) == [
        "image",
        "method",
        "transformation",
        "prediction_kept",
        "map_similarity",
    ]
    assert len(robustness) == 4 * 2 * 6
    sanity = pd.read_csv(tmp_path / "out" / "sanity_check.csv")
    assert set(sanity.method) == set(scores.method)
    text = json.dumps(nbformat.read(tmp_path / "executed.ipynb", as_version=4).cells)
    assert "MLO_L: skipped" in text
    # the poster's table: 2 methods x 3 smoothings + random, x 2 forms, per image
    comparison = pd.read_csv(tmp_path / "out" / "attribution_comparison.csv")
    assert len(comparison) == 4 * (2 * 3 + 1) * 2
    assert set(comparison.form) == {"pixel", "region"}
    assert comparison.deletion_auc.notna().all() and comparison.auc.notna().any()
    assert (tmp_path / "out" / "attribution_comparison.png").is_file()
    assert "EG baselines drawn from the test images" in text  # no TrainingSet here


@pytest.mark.slow
def test_an_unwritable_output_folder_is_refused_before_the_work(predictions, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(papermill.PapermillExecutionError, match="is a file, not a folder"):
        execute_notebook(
            "Figure_merit.ipynb",
            tmp_path / "executed.ipynb",
            predictions_dir=str(predictions),
            output_dir=str(blocker / "out"),
        )
