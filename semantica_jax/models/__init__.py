"""semantica_jax.models."""
