"""encoder/evaluate.py: k-NN and ROC AUC on known points."""

import numpy as np

from semantica_jax.encoder import evaluate as encoder_evaluate


def test_knn_accuracy_on_known_points():
    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]], np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    queries = np.array([[1, 0.05], [0.05, 1]], np.float32)
    np.testing.assert_array_equal(
        encoder_evaluate.knn_predict(gallery, labels, queries, k=3), [0, 1]
    )
    assert encoder_evaluate.knn_accuracy(gallery, labels, queries, np.array([0, 0]), k=1) == 0.5
    assert encoder_evaluate.roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.85])) == 0.75


def test_nearest_finds_the_k_most_similar_in_any_block_size():
    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], np.float32)
    queries = np.array([[1, 0.05], [0.05, 1], [0.6, 0.65]], np.float32)
    for block in (None, 1, 2):
        index, cosine = encoder_evaluate.nearest(gallery, queries, 2, block)
        assert [sorted(row) for row in index.tolist()] == [[0, 1], [2, 3], [3, 4]]
        unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        np.testing.assert_allclose(cosine, np.take_along_axis(q @ unit.T, index, 1), rtol=1e-6)
