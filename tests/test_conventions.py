import pytest

from breastdensity.conventions import (
    CHECKPOINT_PATTERN,
    FINAL_WEIGHTS,
    DatasetError,
    DataWarning,
    best_checkpoint,
    checkpoint_accuracy,
    checkpoint_epoch,
    default_model_path,
    dense_mask_path,
    image_file_name,
    list_class_images,
    model_dir,
    parse_image_name,
    split_dir,
)


def test_best_checkpoint_by_accuracy_then_latest_epoch(tmp_path):
    folder = model_dir(tmp_path, "CC_R")
    folder.mkdir()
    assert best_checkpoint(folder) is None
    for epoch, accuracy in ((1, 0.5), (3, 0.75), (7, 0.75), (9, 0.25)):
        name = CHECKPOINT_PATTERN.format(epoch=epoch, val_acc=accuracy)
        (folder / name).touch()
    (folder / FINAL_WEIGHTS).touch()  # a checkpoint is preferred to the last epoch's weights
    best = best_checkpoint(folder)
    assert best.name == "weights-improvement-07-0.75.keras"
    assert (checkpoint_epoch(best), checkpoint_accuracy(best)) == (7, 0.75)
    assert default_model_path(tmp_path, "CC_R") == best


def test_default_model_falls_back_to_final_weights_and_says_how_to_get_one(tmp_path):
    folder = model_dir(tmp_path, "CC_L")
    folder.mkdir()
    with pytest.raises(DatasetError, match="Train_ResNet.py"):
        default_model_path(tmp_path, "CC_L")
    (folder / FINAL_WEIGHTS).touch()
    assert default_model_path(tmp_path, "CC_L") == folder / FINAL_WEIGHTS


def test_mask_of_a_test_image():
    path = dense_mask_path("DenseMasks/TestSet", "MLO_R", "C", "te0001_C_MLO_R.png")
    assert path.as_posix() == "DenseMasks/TestSet/MLO_R/test/C/te0001_C_MLO_R.png"


def test_parse_image_name():
    name = parse_image_name("124_1_A_CC_L.png")
    assert (name.subject, name.label, name.projection) == ("124_1", "A", "CC_L")
    other = parse_image_name("scan0007.png")
    assert (other.subject, other.label, other.projection) == ("scan0007", None, None)
    assert image_file_name("124_1", "A", "CC_L") == "124_1_A_CC_L.png"


def test_folder_conventions():
    assert split_dir("data", "train", "CC_R").as_posix() == "data/TrainingSet/CC_R/train"
    assert split_dir(".", "validation", "MLO_L").as_posix() == "ValidationSet/MLO_L/validation"
    assert model_dir("models", "CC_R").as_posix() == "models/CC_R_model"


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_listing_order_and_warnings(tmp_path):
    folder = tmp_path / "TestSet" / "CC_R" / "test"
    touch(folder / "C" / "2_C_CC_R.png")
    touch(folder / "A" / "10_A_CC_R.png")
    touch(folder / "A" / "1_A_CC_R.png")
    touch(folder / "A" / ".DS_Store")
    touch(folder / "A" / "notes.txt")
    (folder / "B").mkdir()
    with pytest.warns(DataWarning) as caught:
        records = list_class_images(folder)
    assert [r.path.name for r in records] == ["10_A_CC_R.png", "1_A_CC_R.png", "2_C_CC_R.png"]
    assert [r.label_index for r in records] == [0, 0, 2]
    assert [r.subject for r in records] == ["10", "1", "2"]
    messages = " ".join(str(w.message) for w in caught)
    assert ".DS_Store" in messages and "notes.txt" in messages
    assert "B has no image" in messages and "D is missing" in messages


def test_listing_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        list_class_images(tmp_path / "nowhere")
    (tmp_path / "empty" / "A").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no image"), pytest.warns(DataWarning):
        list_class_images(tmp_path / "empty")
    touch(tmp_path / "odd" / "E" / "x.png")
    with pytest.raises(DatasetError, match="not classes: E"):
        list_class_images(tmp_path / "odd")
