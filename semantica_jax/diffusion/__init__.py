"""semantica_jax.diffusion."""
