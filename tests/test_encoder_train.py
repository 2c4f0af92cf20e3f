"""encoder/train.py: training separates classes."""

import numpy as np
import pytest

from semantica_jax.encoder import bundle as bundle_lib
from semantica_jax.encoder import encode as encode_lib
from semantica_jax.encoder import evaluate as encoder_evaluate
from semantica_jax.encoder import train as encoder_train


def _gap_and_knn(bundle, images, labels):
    _, cls = encode_lib.encode(bundle, images, with_tokens=False)
    report, _, _ = encoder_evaluate.cosine_distributions(cls, labels, num_pairs=2000)
    gap = report["same"]["mean"] - report["different"]["mean"]
    acc = encoder_evaluate.knn_accuracy(cls[:100], labels[:100], cls[100:], labels[100:], k=5)
    return gap, acc


@pytest.mark.parametrize("objective", ["contrastive", "simclr"])
def test_training_separates_two_classes(objective, small_vit, make_bundle, bars, tiny_encoder_cfg):
    train_x, train_y = bars(256, seed=0)
    test_x, test_y = bars(200, seed=1)
    before = make_bundle(small_vit, 0)
    gap0, acc0 = _gap_and_knn(before, test_x, test_y)
    cfg = tiny_encoder_cfg(objective=objective)
    model, params, summary = encoder_train.train_encoder(
        small_vit,
        cfg,
        train_x,
        train_y if objective == "contrastive" else None,
        seed=0,
        log=lambda _: None,
    )
    after = bundle_lib.EncoderBundle(model, params, "", "", bundle_lib.hash_params(params))
    gap1, acc1 = _gap_and_knn(after, test_x, test_y)
    assert summary["steps"] == 40 and np.isfinite(summary["final"]["loss"])
    assert gap1 > gap0 + 0.1, (gap0, gap1)
    if objective == "contrastive":
        assert acc1 >= 0.95, (acc0, acc1)
        assert gap1 > 0.4, gap1


def test_progress_is_reported_where_the_host_waited_for_the_step(
    monkeypatch, small_vit, bars, tiny_encoder_cfg
):
    """Steps are dispatched asynchronously: the rate is only true at the logged (synced)
    steps, so the loop reports there and at the end, not after every dispatch."""
    reported = []
    monkeypatch.setattr(
        encoder_train.progress, "loop", lambda *a, **k: reported.append, raising=True
    )
    train_x, train_y = bars(64, seed=0)
    cfg = tiny_encoder_cfg(num_steps=10, log_every=4)
    encoder_train.train_encoder(small_vit, cfg, train_x, train_y, seed=0, log=lambda _: None)
    assert reported == [4, 8, 10]
