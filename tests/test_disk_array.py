"""Row arrays on disk: numpy-equal indexing, chunked writing that is all or nothing."""

import os

import numpy as np
import pytest

from semantica_jax.data import disk_array


@pytest.fixture
def stored(tmp_path):
    """A uint8 [50, 4, 3, 2] array, whole in one file and split over three files."""
    x = np.random.default_rng(0).integers(0, 256, (50, 4, 3, 2), dtype=np.uint8)
    whole = str(tmp_path / "whole.npy")
    with disk_array.NpyWriter(whole, x.shape, np.uint8) as writer:
        for start in range(0, 50, 7):
            writer.write(x[start : start + 7])
    parts = []
    for i, (a, b) in enumerate([(0, 20), (20, 21), (21, 50)]):
        parts.append(str(tmp_path / f"part{i}.npy"))
        np.save(parts[-1], x[a:b])
    return x, disk_array.DiskArray(whole), disk_array.open_rows(parts)


@pytest.mark.parametrize(
    "index",
    [
        7,
        -1,
        slice(3, 30),
        slice(None, None, -4),
        np.array([9, 2, 2, 49, 20, 0, 21, 3]),  # unordered, repeated, across part borders
        np.array([], np.int64),
        np.array([[3, 40], [40, 0], [19, 20]]),  # [P, 2] like the pair list
        np.arange(50) % 3 == 0,
        (np.array([4, 1]), 2, slice(None), 0),
    ],
    ids=["int", "negative", "slice", "reversed", "gather", "empty", "pairs", "mask", "tuple"],
)
def test_indexing_equals_numpy(stored, index):
    x, whole, concat = stored
    for array in (whole, concat):
        got = array[index]
        np.testing.assert_array_equal(got, x[index])
        assert got.dtype == x.dtype


def test_shape_dtype_conversion_and_fingerprint(stored):
    x, whole, concat = stored
    for array in (whole, concat):
        assert (array.shape, array.dtype, array.ndim, len(array)) == (x.shape, x.dtype, 4, 50)
        np.testing.assert_array_equal(np.asarray(array), x)
        assert disk_array.fingerprint(array) == disk_array.fingerprint(x)
    assert disk_array.fingerprint(x[:49]) != disk_array.fingerprint(x)
    np.testing.assert_array_equal(np.load(whole.path), x)  # a plain .npy file


def test_out_of_range_rows_raise(stored):
    _, whole, concat = stored
    for array in (whole, concat):
        with pytest.raises(IndexError):
            array[50]
        with pytest.raises(IndexError):
            array[np.array([0, 50])]


def test_an_unfinished_write_leaves_no_file(tmp_path):
    path = str(tmp_path / "a.npy")
    with pytest.raises(ValueError, match="3 of 5 rows"):
        with disk_array.NpyWriter(path, (5, 2), np.float16) as writer:
            writer.write(np.ones((3, 2)))
    assert not os.path.exists(path)
    with pytest.raises(RuntimeError, match="boom"):
        with disk_array.NpyWriter(path, (5, 2), np.float16) as writer:
            writer.write(np.ones((5, 2)))
            raise RuntimeError("boom")
    assert not os.path.exists(path)
    with pytest.raises(ValueError, match="do not fit"):
        with disk_array.NpyWriter(path, (5, 2), np.float16) as writer:
            writer.write(np.ones((6, 2)))


def test_a_truncated_file_is_refused_naming_it(stored, tmp_path):
    _, whole, _ = stored
    path = str(tmp_path / "cut.npy")
    with open(whole.path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read()[:-5])
    with pytest.raises(ValueError, match="cut.npy.*truncated"):
        disk_array.DiskArray(path)


def test_reads_longer_than_one_system_call_are_completed(stored, monkeypatch):
    """Linux returns at most 0x7ffff000 bytes per read: long runs are read in pieces."""
    x, whole, _ = stored
    real = os.preadv
    calls = []

    def short_preadv(fd, buffers, offset):  # the kernel's per-call cap, scaled down
        calls.append(offset)
        return real(fd, [memoryview(buffers[0])[:5]], offset)

    monkeypatch.setattr(os, "preadv", short_preadv)
    monkeypatch.setattr(disk_array, "MAX_READ", 16)
    np.testing.assert_array_equal(whole[:], x)
    np.testing.assert_array_equal(whole[np.array([30, 2, 3])], x[[30, 2, 3]])
    assert len(calls) >= x.nbytes // 5
    assert disk_array.fingerprint(whole, chunk_rows=7) == disk_array.fingerprint(x)
