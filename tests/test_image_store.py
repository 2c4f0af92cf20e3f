"""Splits streamed from TFDS into per-process shards on disk, and read back as one split."""

import os

import numpy as np
import pytest

from semantica_jax.data import image_store, tfds_images

IDENTITY = {"dataset": "toy", "split": "train", "total": 10}


def _toy(total=10):
    images = np.arange(total * 2 * 2, dtype=np.uint8).reshape(total, 2, 2, 1)
    return images, np.arange(total, dtype=np.int32) % 3


def _reader(calls, fail_after=None):
    images, labels = _toy()

    def read_rows(start, stop):
        calls.append((start, stop))
        for i in range(start, stop, 3):
            if fail_after is not None and i - start >= fail_after:
                raise RuntimeError("reader died")
            j = min(i + 3, stop)
            yield images[i:j], labels[i:j]

    return read_rows


def _ensure(directory, index, count, read_rows, warnings, identity=IDENTITY):
    image_store.ensure_shard(
        directory,
        identity,
        10,
        index,
        count,
        read_rows,
        (2, 2, 1),
        lambda m: None,
        warnings.append,
    )


def test_shards_cover_the_rows_and_open_as_one_split(tmp_path):
    assert [image_store.shard_rows(10, i, 3) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert image_store.shard_rows(1, 0, 2) == (0, 0)  # more processes than rows: empty shard
    calls, warnings = [], []
    for index in range(3):
        _ensure(str(tmp_path), index, 3, _reader(calls), warnings)
    assert calls == [(0, 3), (3, 6), (6, 10)] and not warnings
    stored = image_store.open_store(str(tmp_path), IDENTITY, 10, 3)
    images, labels = _toy()
    np.testing.assert_array_equal(stored.images[np.array([9, 0, 4, 3])], images[[9, 0, 4, 3]])
    np.testing.assert_array_equal(stored.labels, labels)
    assert [rows for rows, _ in stored.shards] == [(0, 3), (3, 6), (6, 10)]
    assert len({fingerprint for _, fingerprint in stored.shards}) == 3


def test_a_shard_is_reused_and_rebuilt_when_stale_or_damaged(tmp_path):
    calls, warnings = [], []
    directory = str(tmp_path)
    _ensure(directory, 0, 1, _reader(calls), warnings)
    _ensure(directory, 0, 1, _reader(calls), warnings)
    assert calls == [(0, 10)] and not warnings  # reused
    shard = os.path.join(directory, image_store.shard_name((0, 10), 10))
    with open(os.path.join(shard, "images.npy"), "r+b") as f:
        f.truncate(150)  # header intact, rows missing
    _ensure(directory, 0, 1, _reader(calls), warnings)
    assert len(calls) == 2 and "truncated" in warnings[-1]
    _ensure(directory, 0, 1, _reader(calls), warnings, identity={**IDENTITY, "split": "test"})
    assert len(calls) == 3 and "cannot be used (built for" in warnings[-1]
    _ensure(directory, 0, 1, _reader(calls), warnings)
    stored = image_store.open_store(directory, IDENTITY, 10, 1)
    np.testing.assert_array_equal(np.asarray(stored.images), _toy()[0])


def test_a_crash_while_streaming_leaves_no_shard(tmp_path):
    calls, warnings = [], []
    with pytest.raises(RuntimeError, match="reader died"):
        _ensure(str(tmp_path), 0, 1, _reader(calls, fail_after=6), warnings)
    assert os.listdir(tmp_path) == []  # neither a shard nor a temp dir
    with pytest.raises(FileNotFoundError, match="rows-0000000000-0000000010-of-0000000010"):
        image_store.open_store(str(tmp_path), IDENTITY, 10, 1)
    # A SIGKILL leaves its temp dir behind: named in a warning, not deleted (another run
    # may be writing it), and the shard is built beside it.
    leftover = tmp_path / ".rows-0000000000-0000000010-of-0000000010.tmp-dead"
    leftover.mkdir()
    _ensure(str(tmp_path), 0, 1, _reader(calls), warnings)
    assert leftover.is_dir() and any(str(leftover) in w for w in warnings)
    assert len(image_store.open_store(str(tmp_path), IDENTITY, 10, 1).images) == 10


@pytest.mark.parametrize("split", ["train", "train[:300]"], ids=["plain", "sliced"])
def test_tfds_rows_are_that_slice_of_the_split(mnist_data_dir, split):
    limit = 300 if split == "train" else 0
    whole, whole_labels = tfds_images.load_tfds_images("mnist", split, mnist_data_dir, 28, 1, limit)
    count, batches = tfds_images.read_tfds_images(
        "mnist", split, mnist_data_dir, 28, 1, limit, rows=(120, 290)
    )
    parts = list(batches)
    assert count == 170
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[120:290])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole_labels[120:290])
    assert tfds_images.split_size("mnist", split, mnist_data_dir, limit) == 300
    count, batches = tfds_images.read_tfds_images(  # an empty shard
        "mnist", split, mnist_data_dir, 28, 1, limit, rows=(300, 300)
    )
    assert count == 0 and list(batches) == []


def test_shards_of_a_shuffled_many_file_dataset_join_in_split_order(tmp_path):
    """Most published TFDS sets are shuffled into many files (ImageNet: 1,024); their
    shards must still concatenate to the split as one process reads it."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (160, 4, 4, 1), dtype=np.uint8)
    labels = np.arange(160) % 10
    data_dir = str(tmp_path / "tfds")
    tfds_images.store_image_dataset(
        "shuffled_toy",
        {"train": {"image": images, "label": labels}},
        data_dir,
        num_classes=10,
        shuffled=True,
        num_shards=4,
    )
    files = [f for f in os.listdir(os.path.join(data_dir, "shuffled_toy", "1.0.0")) if "train" in f]
    assert len(files) == 4
    whole, whole_labels = tfds_images.load_tfds_images("shuffled_toy", "train", data_dir, 4, 1, 0)
    assert sorted(whole_labels.tolist()) == sorted(labels.tolist())
    parts = [
        list(tfds_images.read_tfds_images("shuffled_toy", "train", data_dir, 4, 1, 0, rows=r)[1])
        for r in ((0, 53), (53, 106), (106, 160))
    ]
    joined = np.concatenate([b[0] for part in parts for b in part])
    np.testing.assert_array_equal(joined, whole)
