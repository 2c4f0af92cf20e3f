"""Input pipeline: batch contents, determinism, epochs, sharding over processes, exact
resume with prefetching, clean shutdown, and worker errors reaching the consumer."""

import threading
import time

import numpy as np
import pytest

from semantica_jax.data import pipeline as pl

N, H, W, C, T, D = 40, 4, 4, 1, 3, 5
NUM_PAIRS = 70  # not a multiple of any global batch used below: the tail is skipped


@pytest.fixture
def data(tmp_path):
    """Small arrays; tokens as a float16 memmap on disk, as the embedding cache gives."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, H, W, C), dtype=np.uint8)
    tokens = np.lib.format.open_memmap(
        tmp_path / "tokens.npy", mode="w+", dtype=np.float16, shape=(N, T, D)
    )
    tokens[:] = rng.normal(size=(N, T, D))
    tokens.flush()
    tokens = np.load(tmp_path / "tokens.npy", mmap_mode="r")
    cls = rng.normal(size=(N, D)).astype(np.float32)
    labels = rng.integers(0, 10, size=N).astype(np.int32)
    pairs = rng.integers(0, N, size=(NUM_PAIRS, 2)).astype(np.int32)
    return images, tokens, cls, labels, pairs


def _take(it, k):
    return [next(it) for _ in range(k)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _pipeline_threads():
    return [t for t in threading.enumerate() if t.name == "semantica-pipeline" and t.is_alive()]


def test_batch_holds_the_chosen_pairs(data):
    images, tokens, cls, labels, pairs = data
    with pl.Pipeline(*data, batch_size=8, seed=3, prefetch=2) as it:
        batch = next(it)
    ids = pl.batch_pair_ids(NUM_PAIRS, 8, seed=3, epoch=0, step=0)
    cond, target = pairs[ids, 0], pairs[ids, 1]
    assert batch["target"].shape == (8, H, W, C) and batch["target"].dtype == np.float32
    assert batch["cond_tokens"].shape == (8, T, D) and batch["cond_tokens"].dtype == np.float32
    assert batch["cond_cls"].dtype == np.float32 and batch["label"].dtype == np.int32
    np.testing.assert_allclose(batch["target"], images[target] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(batch["cond_image"], images[cond] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(batch["cond_tokens"], tokens[cond].astype(np.float32))
    np.testing.assert_array_equal(batch["cond_cls"], cls[cond])
    np.testing.assert_array_equal(batch["label"], labels[target])
    assert pl.to_unit_range(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]


def test_epochs_cover_the_pairs_once_and_reshuffle(data):
    it = pl.Pipeline(*data, batch_size=8, seed=0, prefetch=0)
    steps = it.steps_per_epoch
    assert steps == NUM_PAIRS // 8
    ids = [pl.batch_pair_ids(NUM_PAIRS, 8, 0, epoch, s) for epoch in (0, 1) for s in range(steps)]
    epoch0, epoch1 = np.concatenate(ids[:steps]), np.concatenate(ids[steps:])
    assert np.unique(epoch0).size == epoch0.size == steps * 8
    assert np.unique(epoch1).size == epoch1.size
    assert not np.array_equal(epoch0, epoch1), "each epoch must be reshuffled"
    _take(it, steps)
    assert it.state()["epoch"] == 1 and it.state()["step"] == 0  # infinite: rolls over
    _assert_same_batches([next(it)], [it.batch_at(1, 0)])


def test_same_seed_same_batches_other_seed_other_batches(data):
    with (
        pl.Pipeline(*data, batch_size=8, seed=1, prefetch=2) as a,
        pl.Pipeline(*data, batch_size=8, seed=1, prefetch=0) as b,
        pl.Pipeline(*data, batch_size=8, seed=2, prefetch=2) as c,
    ):
        k = a.steps_per_epoch + 3  # crosses an epoch boundary
        batches_a = _take(a, k)
        _assert_same_batches(batches_a, _take(b, k))
        assert not np.array_equal(batches_a[0]["target"], next(c)["target"])


def test_two_processes_split_each_global_batch(data):
    glob = pl.Pipeline(*data, batch_size=8, seed=4, prefetch=0)
    shards = [
        pl.Pipeline(*data, batch_size=4, seed=4, process_index=p, process_count=2, prefetch=2)
        for p in (0, 1)
    ]
    steps = glob.steps_per_epoch
    assert all(s.steps_per_epoch == steps for s in shards)
    seen = []
    for step in range(steps):
        ids = [pl.batch_pair_ids(NUM_PAIRS, 4, 4, 0, step, p, 2) for p in (0, 1)]
        assert not set(ids[0]) & set(ids[1]), "shards must be disjoint"
        np.testing.assert_array_equal(
            np.concatenate(ids), pl.batch_pair_ids(NUM_PAIRS, 8, 4, 0, step)
        )
        seen.extend(np.concatenate(ids))
        # The data too: process 0's rows then process 1's rows = the global batch.
        parts = [next(s) for s in shards]
        whole = next(glob)
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    assert len(seen) == len(set(seen)) == steps * 8  # the epoch, once
    for s in shards:
        s.close()


def test_resume_from_saved_position_with_prefetch(data):
    with pl.Pipeline(*data, batch_size=8, seed=5, prefetch=3) as it:
        _take(it, 6)  # into epoch 0's end / epoch 1
        time.sleep(0.2)  # let the worker run ahead and fill its queue
        saved = it.state()
        assert (saved["epoch"], saved["step"]) == divmod(6, it.steps_per_epoch)
        expected = _take(it, 7)
    with pl.Pipeline(*data, batch_size=8, seed=5, prefetch=3, state=saved) as resumed:
        _assert_same_batches(_take(resumed, 7), expected)
    with pl.Pipeline(*data, batch_size=8, seed=5, prefetch=3) as rewound:
        _take(rewound, 2)
        rewound.restore(saved)  # restore on a running pipeline discards its queue
        _assert_same_batches(_take(rewound, 7), expected)
    with pytest.raises(ValueError, match="seed"):
        pl.Pipeline(*data, batch_size=8, seed=6, state=saved)


def test_close_stops_the_worker(data):
    before = len(_pipeline_threads())
    it = pl.Pipeline(*data, batch_size=8, seed=0, prefetch=2)
    next(it)
    assert len(_pipeline_threads()) == before + 1
    it.close()
    it.close()  # idempotent
    assert len(_pipeline_threads()) == before
    with pl.Pipeline(*data, batch_size=8, seed=0, prefetch=1) as ctx:
        next(ctx)
    assert len(_pipeline_threads()) == before


class _FailingTokens:
    """Array-like whose reads fail from the `fail_at`-th read on (a lost disk, say)."""

    def __init__(self, tokens, fail_at):
        self._tokens, self._fail_at, self.reads = tokens, fail_at, 0
        self.ndim, self.shape = tokens.ndim, tokens.shape

    def __getitem__(self, index):
        self.reads += 1
        if self.reads >= self._fail_at:
            raise OSError("simulated read failure")
        return self._tokens[index]


def test_worker_exception_surfaces_in_the_consumer(data):
    images, tokens, cls, labels, pairs = data
    failing = _FailingTokens(tokens, fail_at=3)
    it = pl.Pipeline(images, failing, cls, labels, pairs, batch_size=8, seed=0, prefetch=2)
    _take(it, 2)
    with pytest.raises(OSError, match="simulated read failure"):
        next(it)
    assert it.state()["step"] == 2, "the failed batch was not consumed"
    with pytest.raises(RuntimeError, match="failed earlier"):
        next(it)
    it.close()


def test_bad_inputs_are_clear_errors(data):
    images, tokens, cls, labels, pairs = data
    with pytest.raises(ValueError, match="uint8"):
        pl.Pipeline(images.astype(np.float32), tokens, cls, labels, pairs, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        pl.Pipeline(*data, batch_size=40, seed=0, process_count=2)
    with pytest.raises(ValueError, match="outside"):
        pl.Pipeline(images, tokens, cls, labels, pairs + N, batch_size=8, seed=0)
