"""Every config variant builds a decoder and a schedule, and changes only what it says."""

import jax
import jax.numpy as jnp
import pytest

from configs import mnist
from semantica_jax import decoder
from semantica_jax.models import uvit


@pytest.mark.parametrize("variant", mnist.VARIANTS)
def test_variant_builds(variant):
    config = mnist.get_config(variant)
    model = decoder.build_model(config)
    hw = config.data.image_size
    tokens = (hw // config.encoder.patch_size) ** 2
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0),
            *uvit.example_inputs(model.config, 2, tokens, config.encoder.width),
            train=False,
        )
    )
    assert jax.tree.leaves(shapes)
    logsnr = decoder.training_logsnr_fn(config)(jnp.array([0.0, 0.5, 1.0]))
    assert bool(jnp.all(jnp.diff(logsnr) < 0))


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("film", {"model.cross_attention": False}),
        ("reconstruction", {"episodes.kind": "self", "episodes.filter": False}),
        ("similarity_loss", {"train.sim_loss_weight": 1.0}),
        ("ddpm500", {"diffusion.schedule": "ddpm_linear", "diffusion.prediction": "eps"}),
        ("no_filter", {"episodes.filter": False}),
        # The label-free generators keep the eps loss they were measured with.
        (
            "unsupervised",
            {"encoder.objective": "simclr", "episodes.kind": "kmeans", "diffusion.loss": "eps"},
        ),
        (
            "quality",
            {
                "train.num_steps": 11000,
                "train.checkpoint_every": 1000,
                "train.eval_every": 2750,
                "sampler.guidance": 0.2,
            },
        ),
    ],
)
def test_variant_changes_only_what_differs(variant, expected):
    base = _flat(mnist.get_config("default").to_dict())
    other = _flat(mnist.get_config(variant).to_dict())
    changed = {k: v for k, v in other.items() if base[k] != v and k != "variant"}
    assert changed == expected


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'nope'.*tiny"):
        mnist.get_config("nope")
