"""encoder/encode.py: batched encoding and CLS similarity."""

import numpy as np
import pytest

from semantica_jax.encoder import encode as encode_lib


def test_encode_batched_dtypes_and_similarity(make_bundle, small_vit, bars):
    bundle = make_bundle(small_vit, 0)
    images, _ = bars(7, seed=4)
    tokens, cls = encode_lib.encode(bundle, images, batch_size=3)
    tokens_f, cls_f = encode_lib.encode(
        bundle, images.astype(np.float32) / 127.5 - 1, batch_size=100
    )
    assert tokens.shape == (7, 49, 16) and cls.shape == (7, 16)
    np.testing.assert_allclose(tokens, tokens_f, atol=1e-4)
    np.testing.assert_allclose(cls, cls_f, atol=1e-4)
    direct = bundle.model.apply({"params": bundle.params}, images[:2] / 127.5 - 1.0)[1]
    np.testing.assert_allclose(cls[:2], direct, atol=1e-4)
    matrix = encode_lib.similarity_matrix(bundle, images)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
    want = cls[0] @ cls[1] / np.linalg.norm(cls[0]) / np.linalg.norm(cls[1])
    assert abs(encode_lib.similarity(bundle, images[0], images[1]) - want) < 1e-5
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
        encode_lib.encode(bundle, images.astype(np.float32))
