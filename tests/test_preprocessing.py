import numpy as np
import pytest
from conftest import write_png

from breastdensity.preprocessing import (
    ImageReadError,
    load_image,
    prediction_dataset,
    read_grayscale,
    training_dataset,
)


@pytest.fixture
def gray8(rng):
    image = np.zeros((120, 90), np.uint8)
    image[20:100, 10:80] = rng.integers(60, 250, size=(80, 70))
    return image


def check_preprocessed(x, size):
    assert x.shape == (*size, 3)
    assert x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-5  # samplewise centring
    np.testing.assert_array_equal(x[..., 0], x[..., 1])  # gray repeated
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_8bit_grayscale(tmp_path, gray8):
    path = write_png(tmp_path / "g8.png", gray8)
    x = load_image(path, 64)
    check_preprocessed(x, (64, 64))
    # range: /255 then centred, so the spread is at most 1
    assert x.max() - x.min() <= 1.0 + 1e-6


def test_16bit_is_scaled_to_the_8bit_range(tmp_path, gray8):
    path8 = write_png(tmp_path / "g8.png", gray8)
    path16 = write_png(tmp_path / "g16.png", gray8.astype(np.uint16) * 257)
    np.testing.assert_allclose(read_grayscale(path16), read_grayscale(path8), atol=1e-3)
    np.testing.assert_allclose(load_image(path16, 64), load_image(path8, 64), atol=1e-5)


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_and_rgba_become_gray(tmp_path, gray8, channels):
    colour = np.repeat(gray8[:, :, None], channels, axis=2)
    path = write_png(tmp_path / "rgb.png", colour)
    gray_path = write_png(tmp_path / "g.png", gray8)
    x = load_image(path, (80, 60))
    check_preprocessed(x, (80, 60))
    np.testing.assert_allclose(x, load_image(gray_path, (80, 60)), atol=1e-5)


def test_16bit_rgb(tmp_path, gray8):
    colour = np.repeat(gray8[:, :, None].astype(np.uint16) * 257, 3, axis=2)
    x = load_image(write_png(tmp_path / "rgb16.png", colour), 64)
    check_preprocessed(x, (64, 64))


def test_resize_does_not_keep_aspect_ratio(tmp_path, gray8):
    # 120x90 image -> 64x64: the whole image is squashed, nothing cropped or padded.
    image = np.zeros((120, 90), np.uint8)
    image[:, :45] = 200  # left half bright
    x = load_image(write_png(tmp_path / "half.png", image), 64)
    left, right = x[:, :31, 0], x[:, 33:, 0]
    assert (left > 0).all() and (right < 0).all()


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_image(bad, 64)
    with pytest.raises(ImageReadError, match="missing.png"):
        read_grayscale(tmp_path / "missing.png")


def test_dataset_matches_single_image_loader(tmp_path, rng):
    paths = [
        write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (50 + i, 40), dtype=np.uint8))
        for i in range(5)
    ]
    batches = list(prediction_dataset(paths, (64, 48), batch_size=2))
    assert [len(images) for images, _, _ in batches] == [2, 2, 1]
    images = np.concatenate([images.numpy() for images, _, _ in batches])
    expected = np.stack([load_image(p, (64, 48)) for p in paths])
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_dataset_with_status_flags_bad_files(tmp_path, rng):
    good = write_png(tmp_path / "good.png", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    ((images, ok, index),) = list(prediction_dataset([good, bad], (64, 64), batch_size=4))
    assert ok.numpy().tolist() == [True, False]
    assert index.numpy().tolist() == [0, 1]


def test_cached_dataset_gives_the_same_images_and_still_reshuffles(tmp_path, rng):
    paths = [
        write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (50, 40), dtype=np.uint8))
        for i in range(6)
    ]
    labels = list(range(6))
    plain = training_dataset(paths, labels, (32, 32), 6, num_classes=6)
    cached = training_dataset(paths, labels, (32, 32), 6, num_classes=6, cache=True)
    ((x_plain, _),), ((x_cached, _),) = list(plain), list(cached)
    np.testing.assert_allclose(x_cached.numpy(), x_plain.numpy(), atol=1e-6)

    shuffled = training_dataset(paths, labels, (32, 32), 6, num_classes=6, shuffle=True, cache=True)
    orders = set()
    for _epoch in range(4):
        ((x, y),) = list(shuffled)
        index = np.argmax(y.numpy(), axis=1)
        np.testing.assert_allclose(x.numpy(), x_plain.numpy()[index], atol=1e-6)
        orders.add(tuple(index))
    assert len(orders) > 1  # a new order every epoch, also from the cache
