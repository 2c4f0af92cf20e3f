"""semantica_jax.metrics."""
