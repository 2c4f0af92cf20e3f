"""encoder/bundle.py: an encoder on disk."""

import os

import jax
import numpy as np
import pytest

from semantica_jax.encoder import bundle as bundle_lib
from semantica_jax.models.vit import ViTConfig


def test_save_load_encoder_round_trip_and_mismatch(tmp_path, small_vit, make_bundle):
    bundle = make_bundle(small_vit, 3)
    saved = bundle_lib.save_encoder(str(tmp_path / "enc"), small_vit, bundle.params, {"key": "abc"})
    loaded = bundle_lib.load_encoder(saved.path, expected=small_vit)
    assert loaded.params_hash == bundle.params_hash and loaded.key == "abc"
    jax.tree.map(np.testing.assert_array_equal, loaded.params, bundle.params)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    wider = ViTConfig(**{**small_vit.__dict__, "width": 32, "heads": 2})
    with pytest.raises(ValueError, match="width: checkpoint 16 vs config 32"):
        bundle_lib.load_encoder(saved.path, expected=wider)
