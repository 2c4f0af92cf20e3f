"""benchmarks/step_levers.py compares like with like (values, not speed)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import step_levers  # noqa: E402


def test_fused_qkv_computes_the_separate_projections_attention():
    fns = step_levers.attention_fns(batch=2, tokens=5, width=8, heads=2)
    _, sep, x, sep_apply = fns["separate"]
    _, fused, _, fused_apply = fns["fused"]
    p = sep["params"]
    # The fused kernel stacks query, key, value along a new axis 1; the key has no bias.
    kernel = jnp.stack([p[n]["kernel"] for n in ("query", "key", "value")], axis=1)
    bias = jnp.stack([p["query"]["bias"], jnp.zeros_like(p["query"]["bias"]), p["value"]["bias"]])
    mapped = {"params": {"qkv": {"kernel": kernel, "bias": bias}, "out": p["out"]}}
    assert jax.tree.map(jnp.shape, mapped) == jax.tree.map(jnp.shape, fused)
    np.testing.assert_allclose(fused_apply(mapped, x), sep_apply(sep, x), rtol=1e-5, atol=1e-6)


def test_ema_update_by_value():
    update = step_levers.ema_fn()
    ema = {"a": jnp.array([1.0, 2.0])}
    out = update(ema, {"a": jnp.array([3.0, 6.0])}, 0.75)
    np.testing.assert_allclose(out["a"], [1.5, 3.0])


def test_heads_first_layout_computes_the_same_attention():
    fns = step_levers.attention_fns(batch=2, tokens=5, width=8, heads=2)
    _, sep, x, sep_apply = fns["separate"]
    _, hf, _, hf_apply = fns["heads_first"]
    p = sep["params"]
    mapped = {
        "params": {
            "query": p["query"]["kernel"],
            "query_bias": p["query"]["bias"],
            "key": p["key"]["kernel"],
            "value": p["value"]["kernel"],
            "value_bias": p["value"]["bias"],
            "out": p["out"]["kernel"],
            "out_bias": p["out"]["bias"],
        }
    }
    assert jax.tree.map(jnp.shape, mapped) == jax.tree.map(jnp.shape, hf)
    np.testing.assert_allclose(hf_apply(mapped, x), sep_apply(sep, x), rtol=1e-5, atol=1e-6)
