"""`main --mode=eval` on a tiny trained workdir: the files, the N of every figure, sanity."""

import json
import os

import numpy as np
import pytest


@pytest.fixture(scope="module")
def evaluated(tiny_run, session_cache, tmp_path_factory, run_main):
    """The session's tiny run (copied), evaluated by `main --mode=eval`."""
    import shutil

    workdir = str(tmp_path_factory.mktemp("eval_run") / "run")
    shutil.copytree(tiny_run, workdir)
    run_main(workdir, session_cache, "--mode=eval")
    return workdir


def test_eval_writes_metrics_with_their_n(evaluated):
    metrics = json.load(open(os.path.join(evaluated, "eval", "metrics.json")))
    assert metrics["step"] == 6 and metrics["num_images"] == 40
    full, one = metrics["full_set"], metrics["10_shot"]
    assert full["k"] == 40 and full["num_per_cond"] == 1 and full["num_images"] == 40
    assert one["k"] == 10 and one["num_per_cond"] == 4
    for m in (full, one, metrics["real_floor"]):
        assert np.isfinite(m["fid"]) and m["fid"] >= 0
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert metrics["real_floor"]["n"] == 40
    assert -1 <= one["alignment_encoder"] <= 1 and one["diversity"] >= 0
    # Class consistency per class: the 40 full-set conditioning images are 4 per class,
    # the one-shot's 10 are one per class; the overall share is the mean of the classes'.
    for m in (full, one):
        per = m["class_consistency_per_class"]
        assert sorted(per) == [str(c) for c in range(10)]
        assert all(0 <= v <= 1 for v in per.values())
        assert m["class_consistency"] == pytest.approx(np.mean(list(per.values())))
        assert (
            m["class_consistency_min"] == per[m["class_consistency_min_class"]] == min(per.values())
        )
    # The encoder's k-NN class of the conditioning images, and the misses it explains.
    for m in (full, one):
        per = m["encoder_knn_accuracy_per_class"]
        assert sorted(per) == [str(c) for c in range(10)]
        assert m["encoder_knn_accuracy"] == pytest.approx(np.mean(list(per.values())))
        assert m["encoder_wrong_share"] == pytest.approx(1 - m["encoder_knn_accuracy"])
        for key in ("class_consistency_encoder_right", "follows_encoder_where_wrong"):
            assert np.isnan(m[key]) or 0 <= m[key] <= 1
    # Per class, the encoder judges 4 full-set images (shares in quarters) and 1 one-shot
    # image (0 or 1); where it is right on that one, the one-shot class keeps all of its
    # samples in the "encoder right" share, and where it is wrong, none.
    assert all(4 * v == int(4 * v) for v in full["encoder_knn_accuracy_per_class"].values())
    right = one["class_consistency_encoder_right_per_class"]
    for c, v in one["encoder_knn_accuracy_per_class"].items():
        assert v in (0.0, 1.0)
        assert right.get(c) == (one["class_consistency_per_class"][c] if v else None)
    # An untrained decoder (6 steps) is far from the data: worse than the real-data floor.
    assert full["fid"] > metrics["real_floor"]["fid"]


def test_eval_scalars_include_each_class(evaluated):
    from test_train import event_tags

    tags = event_tags(os.path.join(evaluated, "eval", "tb"))
    for name in ("full_set", "10_shot"):
        assert tags[f"eval/{name}/fid"] == [6]
        assert tags[f"eval/{name}/class_consistency_min"] == [6]
        assert tags[f"eval/{name}/encoder_knn_accuracy"] == [6]
        for c in range(10):
            assert tags[f"eval/{name}/class_consistency_per_class/{c}"] == [6]


def test_guidance_sweep_table_and_plot(evaluated):
    rows = json.load(open(os.path.join(evaluated, "eval", "guidance_sweep.json")))
    assert [r["guidance"] for r in rows] == [0.0, 0.5]
    assert all(r["num_images"] == 20 for r in rows)
    assert all(0 <= r["one_shot_recall"] <= 1 for r in rows)
    from PIL import Image

    assert Image.open(os.path.join(evaluated, "eval", "guidance_sweep.png")).size[0] > 300


def test_balanced_subset_restricted_to_classes():
    import numpy as np

    from semantica_jax import evaluate

    labels = np.repeat(np.arange(10), 20)
    picked = evaluate.balanced_subset(labels, 50, 0, "eval.num_images", classes=(5, 6, 7, 8, 9))
    assert sorted(set(labels[picked])) == [5, 6, 7, 8, 9]
    assert np.bincount(labels[picked], minlength=10)[5:].tolist() == [10] * 5
    full = evaluate.balanced_subset(labels, 50, 0, "eval.num_images")
    assert len(set(labels[full])) == 10


@pytest.mark.parametrize(
    "total, max_batch, multiple, expected",
    [
        (2000, 200, 1, 200),
        (300, 200, 1, 150),
        (300, 200, 8, 152),
        (7, 200, 1, 7),
        (201, 200, 1, 101),
    ],
)
def test_even_batch_size(total, max_batch, multiple, expected):
    from semantica_jax import evaluate

    bs = evaluate.even_batch_size(total, max_batch, multiple)
    assert bs == expected and bs % multiple == 0
    # As few batches as max_batch allows, and never more padding than one batch's rounding.
    assert -(-total // bs) == -(-total // max_batch)
    assert -(-total // bs) * bs - total < bs


def test_guidance_sweep_reuses_what_was_sampled():
    """A (w, protocol) whose features are given is not sampled again; its row is theirs."""
    import jax
    import ml_collections

    from semantica_jax import evaluate
    from semantica_jax.metrics import fewshot

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 3)
    subset = np.arange(30) + 100
    real_feats = rng.normal(size=(30, 4))
    calls = []

    def gen(cond_indices, guidance, key):  # one "image" per conditioning index
        calls.append((cond_indices.tolist(), float(guidance)))
        noise = np.random.default_rng(len(calls)).normal(size=(len(cond_indices), 1, 1, 4))
        return (cond_indices[:, None, None, None] / 100.0 + guidance + noise).astype("f4")

    config = ml_collections.ConfigDict(
        {"seed": 0, "eval": {"guidance_sweep": (0.0, 0.5), "pr_k": 3}}
    )
    given = {(0.5, "full"): rng.normal(size=(30, 4)), (0.5, "one_shot"): rng.normal(size=(30, 4))}
    args = (config, gen, real_feats, subset, labels, lambda x: x.reshape(len(x), -1))
    rows = evaluate.guidance_sweep(
        *args, jax.random.key(0), sampled={(0.5, "full"): given[0.5, "full"]}
    )
    # Default one-shot: one subset image per class, 3 samples each; w = 0.5's full set given.
    own = subset[fewshot.select_conditioning(labels, 10, 0)]
    assert calls == [
        (subset.tolist(), 0.0),
        (np.repeat(own, 3).tolist(), 0.0),
        (np.repeat(own, 3).tolist(), 0.5),
    ]
    expected = fewshot.kshot_metrics(real_feats, given[0.5, "full"], pr_k=3)
    assert rows[1]["guidance"] == 0.5 and rows[0]["fid"] != rows[1]["fid"]
    assert {k: rows[1][k] for k in ("fid", "precision", "recall")} == expected
    # Other one-shot images (the eval's, from outside the subset), and both sets given at 0.5.
    calls.clear()
    cond = np.arange(10) + 500
    rows = evaluate.guidance_sweep(*args, jax.random.key(0), one_shot_cond=cond, sampled=given)
    assert calls == [(subset.tolist(), 0.0), (np.repeat(cond, 3).tolist(), 0.0)]
    expected = fewshot.kshot_metrics(real_feats, given[0.5, "one_shot"], pr_k=3)
    assert {k: rows[1]["one_shot_" + k] for k in ("fid", "precision", "recall")} == expected
