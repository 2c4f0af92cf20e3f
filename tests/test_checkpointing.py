"""utils/checkpointing.py: atomic pytree save/restore."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semantica_jax.utils import checkpointing


def test_save_restore_pytree_round_trip_exact(tmp_path):
    tree = {
        "w": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32),
        "nested": {"b": jnp.arange(5, dtype=jnp.bfloat16), "i": np.arange(6, dtype=np.int32)},
    }
    path = checkpointing.save_pytree(tmp_path / "ckpt", tree)
    for target in (None, jax.eval_shape(lambda: tree)):
        got = checkpointing.restore_pytree(path, target)
        for want, have in zip(jax.tree.leaves(tree), jax.tree.leaves(got), strict=True):
            assert have.dtype == want.dtype and have.shape == want.shape
            np.testing.assert_array_equal(np.asarray(have), np.asarray(want))
    with pytest.raises(FileExistsError):
        checkpointing.save_pytree(path, tree)


def test_crashed_save_is_not_restored_and_is_replaced(tmp_path):
    final = tmp_path / "ckpt"
    # What a save killed before Orbax's final rename leaves behind.
    partial = tmp_path / "ckpt.orbax-checkpoint-tmp"
    partial.mkdir()
    (partial / "garbage").write_text("half written")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpointing.restore_pytree(final)
    checkpointing.save_pytree(final, {"x": np.ones(3, np.float32)})
    assert not partial.exists()
    np.testing.assert_array_equal(checkpointing.restore_pytree(final)["x"], np.ones(3))
