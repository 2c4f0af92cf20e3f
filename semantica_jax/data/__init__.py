"""semantica_jax.data."""
